//! Schema migrations, applied in order. Never edit a released one: add another.
//! Portable DDL only (TEXT, BIGINT, DOUBLE PRECISION), valid on SQLite and PostgreSQL.

pub const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE hosts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        url TEXT NOT NULL,
        cpus BIGINT NOT NULL,
        memory_mib BIGINT NOT NULL,
        accel TEXT NOT NULL,
        accel_reason TEXT NOT NULL,
        qemu_version TEXT NOT NULL,
        kernel TEXT NOT NULL,
        last_seen TEXT NOT NULL
    )",
        "CREATE TABLE images (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        format TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        initrd TEXT,
        cmdline TEXT,
        size_bytes BIGINT NOT NULL,
        virtual_size_mib BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        host_id TEXT NOT NULL REFERENCES hosts(id),
        created_at TEXT NOT NULL
    )",
        "CREATE TABLE vms (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        host_id TEXT REFERENCES hosts(id),
        image_id TEXT REFERENCES images(id),
        memory_mib BIGINT NOT NULL,
        max_memory_mib BIGINT NOT NULL,
        vcpus BIGINT NOT NULL,
        max_vcpus BIGINT NOT NULL,
        state TEXT NOT NULL,
        state_reason TEXT,
        on_poweroff TEXT NOT NULL,
        on_reboot TEXT NOT NULL,
        on_crash TEXT NOT NULL,
        saved_path TEXT,
        pid BIGINT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )",
        "CREATE TABLE disks (
        id TEXT PRIMARY KEY,
        vm_id TEXT NOT NULL REFERENCES vms(id),
        idx BIGINT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        format TEXT NOT NULL,
        size_mib BIGINT NOT NULL,
        image_id TEXT REFERENCES images(id),
        UNIQUE (vm_id, idx)
    )",
        "CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL,
        progress DOUBLE PRECISION NOT NULL,
        message TEXT NOT NULL,
        error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )",
        "CREATE TABLE operations (
        id TEXT PRIMARY KEY,
        vm_id TEXT REFERENCES vms(id),
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        error TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT
    )",
        "CREATE INDEX operations_vm ON operations (vm_id)",
    ],
    &[
        "CREATE TABLE networks (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            cidr TEXT NOT NULL UNIQUE,
            gateway TEXT NOT NULL,
            mode TEXT NOT NULL,
            uplink TEXT,
            domain TEXT,
            ipv6_prefix TEXT,
            created_at TEXT NOT NULL
        )",
        "CREATE TABLE nics (
            id TEXT PRIMARY KEY,
            vm_id TEXT NOT NULL REFERENCES vms(id),
            network_id TEXT NOT NULL REFERENCES networks(id),
            idx BIGINT NOT NULL,
            mac TEXT NOT NULL UNIQUE,
            ip TEXT NOT NULL,
            ipv6 TEXT,
            UNIQUE (network_id, ip),
            UNIQUE (vm_id, idx)
        )",
        "CREATE TABLE port_forwards (
            id TEXT PRIMARY KEY,
            vm_id TEXT NOT NULL REFERENCES vms(id),
            nic_id TEXT NOT NULL REFERENCES nics(id),
            proto TEXT NOT NULL,
            host_port BIGINT NOT NULL,
            guest_port BIGINT NOT NULL,
            UNIQUE (proto, host_port)
        )",
    ],
    &["ALTER TABLE networks ADD COLUMN dns_forward TEXT"],
    &["CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        vm_id TEXT NOT NULL REFERENCES vms(id),
        name TEXT NOT NULL,
        with_memory BIGINT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (vm_id, name)
    )"],
    &[
        "ALTER TABLE vms ADD COLUMN cdrom_image_id TEXT REFERENCES images(id)",
        "ALTER TABLE vms ADD COLUMN boot_json TEXT",
        "ALTER TABLE vms ADD COLUMN cloud_json TEXT",
        "CREATE TABLE pools (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            driver TEXT NOT NULL,
            path TEXT NOT NULL,
            host_id TEXT NOT NULL REFERENCES hosts(id),
            created_at TEXT NOT NULL,
            UNIQUE (host_id, path)
        )",
        "ALTER TABLE disks ADD COLUMN pool_id TEXT REFERENCES pools(id)",
    ],
    &[
        "CREATE TABLE users (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            password_hash TEXT,
            is_admin BIGINT NOT NULL,
            created_at TEXT NOT NULL
        )",
        "CREATE TABLE user_groups (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL
        )",
        "CREATE TABLE group_members (
            group_id TEXT NOT NULL REFERENCES user_groups(id),
            user_id TEXT NOT NULL REFERENCES users(id),
            PRIMARY KEY (group_id, user_id)
        )",
        "CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            name TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            read_only BIGINT NOT NULL,
            expires_at TEXT,
            revoked_at TEXT,
            created_at TEXT NOT NULL,
            last_used_at TEXT,
            UNIQUE (user_id, name)
        )",
        "CREATE TABLE ssh_keys (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            name TEXT NOT NULL,
            public_key TEXT NOT NULL,
            created_at TEXT NOT NULL,
            UNIQUE (user_id, name)
        )",
        "CREATE TABLE audit (
            id TEXT PRIMARY KEY,
            at TEXT NOT NULL,
            user_name TEXT,
            source TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            vm_id TEXT,
            result TEXT NOT NULL,
            error TEXT
        )",
        "CREATE INDEX audit_at ON audit (at)",
        "ALTER TABLE vms ADD COLUMN owner_user_id TEXT REFERENCES users(id)",
        "ALTER TABLE vms ADD COLUMN owner_group_id TEXT REFERENCES user_groups(id)",
        "ALTER TABLE vms ADD COLUMN admin_group_id TEXT REFERENCES user_groups(id)",
    ],
    &[
        "CREATE TABLE quotas (
            owner TEXT PRIMARY KEY,
            limits_json TEXT NOT NULL
        )",
        "ALTER TABLE vms ADD COLUMN lease_expires_at TEXT",
    ],
    // Lists, quotas, placement and the lease reaper ask by these columns; at 100,000
    // VMs a scan of the table is what a request would otherwise cost.
    &[
        "CREATE INDEX vms_owner_user ON vms (owner_user_id)",
        "CREATE INDEX vms_owner_group ON vms (owner_group_id)",
        "CREATE INDEX vms_admin_group ON vms (admin_group_id)",
        "CREATE INDEX vms_host_state ON vms (host_id, state)",
        "CREATE INDEX vms_lease ON vms (lease_expires_at)",
    ],
    // Placement adds up the memory of live VMs per host at every create: from the index
    // alone, without reading 100,000 rows.
    &["CREATE INDEX vms_live_memory ON vms (state, host_id, max_memory_mib)"],
    // Audit entries name a domain action (`vm.create`) and keep the parameters that
    // matter, as JSON.
    &["ALTER TABLE audit ADD COLUMN params TEXT"],
    // A network's policy: host ports and networks its VMs may reach, who may attach.
    &["ALTER TABLE networks ADD COLUMN policy TEXT"],
    // A task is its creator's to read (`created_by`, a user id); settings admins change
    // at run time (the audit trail's retention) live in the database with the rest.
    &[
        "ALTER TABLE tasks ADD COLUMN created_by TEXT",
        "CREATE TABLE settings (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )",
    ],
    // A browser session is a token with a note of its browser; it also ends when idle.
    &["ALTER TABLE tokens ADD COLUMN session TEXT"],
    // An image is usable on every host that holds a copy of it (`ready`), copied there
    // on first use or ahead of time; a `copying` row is a copy under way. The host that
    // made the image holds the first copy.
    &[
        "CREATE TABLE image_copies (
            image_id TEXT NOT NULL REFERENCES images(id),
            host_id TEXT NOT NULL REFERENCES hosts(id),
            state TEXT NOT NULL,
            path TEXT,
            initrd TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (image_id, host_id)
        )",
        "INSERT INTO image_copies (image_id, host_id, state, path, initrd, updated_at) \
         SELECT id, host_id, 'ready', path, initrd, created_at FROM images",
    ],
    // Placement filters: a host's tags (comma-separated) that a create may ask for, and
    // a VM's anti-affinity group (no two of a group on one host).
    &[
        "ALTER TABLE hosts ADD COLUMN tags TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE vms ADD COLUMN anti_affinity TEXT",
    ],
    // A host being emptied (`draining`, then `drained`) gets no new VMs; a VM moved off
    // a host by its drain remembers that host, to go back when it is undrained.
    &[
        "ALTER TABLE hosts ADD COLUMN drain TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE vms ADD COLUMN drained_from TEXT",
    ],
    // A migration's journal: its steps, its new disk files, the memory it holds on the
    // target; one at a time per VM.
    &["CREATE TABLE vm_moves (
            id TEXT PRIMARY KEY,
            vm_id TEXT NOT NULL UNIQUE REFERENCES vms(id),
            source TEXT NOT NULL,
            target TEXT NOT NULL,
            memory_mib BIGINT NOT NULL,
            step TEXT NOT NULL,
            was_running BIGINT NOT NULL,
            disks TEXT NOT NULL,
            started_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )"],
    // A pool every host reaches at the same path (NFS, a cluster filesystem): its VMs
    // run on any host, and migrate with their memory only.
    &["ALTER TABLE pools ADD COLUMN shared BIGINT NOT NULL DEFAULT 0"],
    // What a host's QEMU offers (machine types, CPU models), and what a VM is pinned to:
    // a VM moves live only to a host that offers both. A VM without them (made before)
    // runs on `q35` and the accelerator's own CPU, and is pinned at its next start.
    &[
        "ALTER TABLE hosts ADD COLUMN platform TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE vms ADD COLUMN machine TEXT",
        "ALTER TABLE vms ADD COLUMN cpu_model TEXT",
    ],
    // The operations journal: every multi-step operation records what it is about to
    // do (`intent`) and how far it got (`step`), so that one interrupted by a crash is
    // finished or undone at the next start. Its VM is a plain id (no reference): the
    // record outlives a deleted VM.
    &[
        "CREATE TABLE journal (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            target TEXT NOT NULL,
            vm_id TEXT,
            host_id TEXT,
            user_id TEXT,
            state TEXT NOT NULL,
            step TEXT NOT NULL,
            intent TEXT NOT NULL,
            error TEXT,
            started_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            finished_at TEXT
        )",
        "INSERT INTO journal (id, kind, target, vm_id, host_id, user_id, state, step, \
         intent, error, started_at, updated_at, finished_at) \
         SELECT o.id, o.kind, COALESCE((SELECT v.name FROM vms v WHERE v.id = o.vm_id), ''), \
         o.vm_id, NULL, NULL, o.state, '', '{}', o.error, o.started_at, \
         COALESCE(o.finished_at, o.started_at), o.finished_at FROM operations o",
        "DROP TABLE operations",
        "ALTER TABLE journal RENAME TO operations",
        "CREATE INDEX operations_state ON operations (state)",
        "CREATE INDEX operations_vm_id ON operations (vm_id)",
    ],
    // More than one controller on one PostgreSQL database (`cluster.rs`): each one's
    // heartbeat; whether the leader follows a host's agent now; who runs an operation or
    // a migration, and who operates a VM now, so that a dead controller's are taken over.
    &[
        "CREATE TABLE controllers (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            api TEXT NOT NULL,
            started_at TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            leader BIGINT NOT NULL DEFAULT 0
        )",
        "ALTER TABLE hosts ADD COLUMN online BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE operations ADD COLUMN owner TEXT",
        "ALTER TABLE vm_moves ADD COLUMN owner TEXT",
        "CREATE TABLE vm_locks (
            vm_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            token TEXT NOT NULL,
            taken_at TEXT NOT NULL
        )",
    ],
    // Shared by every controller: browser console tickets (a page may reach another
    // controller than the one that issued its ticket), and which controller runs a task
    // (a dead one's running tasks are failed by the leader).
    &[
        "CREATE TABLE console_tickets (
            secret_hash TEXT PRIMARY KEY,
            vm_id TEXT NOT NULL,
            vm_name TEXT NOT NULL,
            console TEXT NOT NULL,
            caller TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )",
        "ALTER TABLE tasks ADD COLUMN owner TEXT",
    ],
    // Each VM's resource limits (JSON: CPU weight and cap, disk IOPS and bandwidth,
    // network rate); a VM without a row has none.
    &["CREATE TABLE vm_limits (
            vm_id TEXT PRIMARY KEY REFERENCES vms(id),
            limits TEXT NOT NULL
        )"],
    // Backups: the directories they go to, and each backup of a VM's disks (kept after
    // the VM is deleted: no key to vms).
    &[
        "CREATE TABLE backup_targets (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            dir TEXT NOT NULL,
            created_at TEXT NOT NULL
        )",
        "CREATE TABLE backups (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            target_id TEXT NOT NULL REFERENCES backup_targets(id),
            vm_id TEXT NOT NULL,
            vm_name TEXT NOT NULL,
            owner TEXT,
            parent_id TEXT REFERENCES backups(id),
            host_id TEXT NOT NULL,
            definition TEXT NOT NULL,
            files TEXT NOT NULL,
            size_bytes BIGINT NOT NULL,
            created_at TEXT NOT NULL
        )",
        "CREATE INDEX backups_vm ON backups (vm_id)",
        "CREATE TABLE backup_schedules (
            vm_id TEXT PRIMARY KEY REFERENCES vms(id),
            target_id TEXT NOT NULL REFERENCES backup_targets(id),
            every_minutes BIGINT NOT NULL,
            keep_last BIGINT,
            keep_daily BIGINT,
            keep_weekly BIGINT,
            full_every BIGINT NOT NULL,
            last_run TEXT
        )",
    ],
    // Resource limits an owner's VMs get where they have none of their own (`default`:
    // everybody's), as JSON like `vm_limits`'.
    &["CREATE TABLE owner_limits (
            owner TEXT PRIMARY KEY,
            limits TEXT NOT NULL
        )"],
    // Whether a VM's QEMU has a guest agent port (set at a cold start), and how each
    // backup was made consistent.
    &[
        "ALTER TABLE vms ADD COLUMN guest_agent BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE backups ADD COLUMN quiesce TEXT",
    ],
    // What a snapshot with memory was taken with (vCPUs, platform, guest agent port,
    // NICs, disks), as JSON: a revert needs the same devices to load the memory.
    &["ALTER TABLE snapshots ADD COLUMN hardware TEXT"],
];
