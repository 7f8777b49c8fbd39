//! Users, groups, tokens, SSH keys, logins, VM ownership and the audit trail.
//!
//! It is long because these share their checks (who the subject is, a user's own
//! password, the lock-out after wrong ones, the revocation sweep of open consoles);
//! tokens and keys with logins are the part to move out when it grows again.

use crate::auth;
use crate::context::Caller;
use crate::context::Ctx;
use crate::error::Error;
use crate::throttle::Requester;
use crate::Controller;
use hostel_api::agent::AgentApi;
use hostel_api::public::*;
use hostel_model::{validate_name, Invalid};
use hostel_store::{
    new_id, now, AuditRecord, GroupRecord, SshKeyRecord, Timestamp, TokenRecord, UserRecord,
};

type Res<T> = crate::error::Result<T>;

/// The user `hostel up`'s token belongs to.
pub const ADMIN_USER: &str = "admin";
/// The id of the token `hostel up` writes to its client config.
pub const ADMIN_TOKEN_ID: &str = "tok-admin";

pub fn forbidden(message: &str) -> Error {
    Error::forbidden(message)
}

/// Where `hostel up` leaves the admin's first password (mode 0600), in its data dir.
pub const INITIAL_ADMIN_PASSWORD: &str = "initial-admin-password";

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn in_days(days: u32) -> Timestamp {
    now() + time::Duration::days(days as i64)
}

impl Controller {
    /// Makes the admin user and registers `hostel up`'s token as theirs (again at every
    /// start, so a rewritten token file takes effect).
    pub async fn bootstrap_admin(&self, token: &str) -> anyhow::Result<()> {
        let (id, secret) = auth::parse_token(token)
            .ok_or_else(|| anyhow::anyhow!("the admin token is not in hostel-ID.SECRET form"))?;
        let admin = match self.store.user_by_name(ADMIN_USER).await? {
            Some(u) => {
                if !u.is_admin {
                    self.store.set_user_admin(&u.id, true).await?;
                }
                u
            }
            None => {
                // A first password, so that the admin can log in to the web UI at once:
                // written for root only, to be changed (`hostel user passwd admin`).
                let password = auth::new_secret()[..24].to_string();
                let u = UserRecord {
                    id: new_id("user"),
                    name: ADMIN_USER.into(),
                    password_hash: Some(
                        auth::hash_password(&password).map_err(|e| anyhow::anyhow!(e))?,
                    ),
                    is_admin: true,
                    created_at: now(),
                };
                let file = self.cfg.data_dir.join(INITIAL_ADMIN_PASSWORD);
                // A file left from another database could be anyone's: made anew, 0600.
                let _ = std::fs::remove_file(&file);
                write_private(&file, &format!("{password}\n"))?;
                self.store.insert_user(&u).await?;
                u
            }
        };
        if let Some(t) = self.store.token_by_id(id).await? {
            if t.revoked_at.is_some() {
                // A revoked token never comes back: a new start makes a new one.
                anyhow::bail!(
                    "the admin token in admin.token was revoked: remove that file and start \
                     again to get a new one"
                );
            }
            if t.secret_hash == auth::hash_secret(secret) {
                return Ok(());
            }
            self.store.delete_token(id).await?;
        }
        self.store
            .insert_token(&TokenRecord {
                id: id.into(),
                user_id: admin.id,
                name: "hostel-up".into(),
                secret_hash: auth::hash_secret(secret),
                read_only: false,
                expires_at: None,
                revoked_at: None,
                created_at: now(),
                last_used_at: None,
                session: None,
            })
            .await
    }

    /// The caller a bearer token stands for, or why it is refused.
    pub async fn caller_for(&self, token: &str) -> Res<Caller> {
        let unauthorized = |why: &str| Error::Unauthorized(why.to_string());
        if token.is_empty() {
            return Err(Error::Unauthorized(crate::auth::NO_TOKEN.into()));
        }
        let (id, secret) =
            auth::parse_token(token).ok_or_else(|| unauthorized("wrong API token"))?;
        let t = self
            .store
            .token_by_id(id)
            .await?
            .ok_or_else(|| unauthorized("wrong API token"))?;
        auth::check_token(&t, secret, now()).map_err(unauthorized)?;
        let user = self
            .store
            .user_by_id(&t.user_id)
            .await?
            .ok_or_else(|| unauthorized("the token's user no longer exists"))?;
        // Last use to the minute: enough for the idle limit and the token list, without a
        // write per request.
        if t.last_used_at
            .is_none_or(|l| l + time::Duration::minutes(1) <= now())
        {
            let _ = self.store.touch_token(&t.id, now()).await;
        }
        Ok(Caller {
            group_ids: self.store.group_ids_of(&user.id).await?,
            user_id: user.id,
            user_name: user.name,
            is_admin: user.is_admin,
            read_only: t.read_only,
            token_name: t.name,
            token_expires_at: t.expires_at,
        })
    }

    async fn user_named(&self, name: &str) -> Res<UserRecord> {
        self.store.user_by_name(name).await?.ok_or_else(|| {
            Error::not_found(
                "user",
                name,
                format!("there is no user named {name:?}: `hostel user list` shows them"),
            )
        })
    }

    async fn group_named(&self, name: &str) -> Res<GroupRecord> {
        self.store.group_by_name(name).await?.ok_or_else(|| {
            Error::not_found(
                "group",
                name,
                format!("there is no group named {name:?}: `hostel group list` shows them"),
            )
        })
    }

    async fn user_view(&self, u: UserRecord) -> Res<User> {
        let mut groups = Vec::new();
        for g in self.store.group_ids_of(&u.id).await? {
            if let Some(g) = self.store.group_by_id(&g).await? {
                groups.push(g.name);
            }
        }
        groups.sort();
        Ok(User {
            name: u.name,
            admin: u.is_admin,
            groups,
            created_at: u.created_at.to_string(),
        })
    }

    pub async fn whoami(&self, ctx: &Ctx) -> Res<WhoAmI> {
        let c = ctx.caller()?;
        let u = self.user_named(&c.user_name).await?;
        let v = self.user_view(u).await?;
        Ok(WhoAmI {
            user: v.name,
            admin: v.admin,
            groups: v.groups,
            token: c.token_name.clone(),
            read_only: c.read_only,
        })
    }

    // ---- users ----

    pub async fn create_user(&self, ctx: &Ctx, req: CreateUserRequest) -> Res<User> {
        ctx.target(&req.name, None);
        ctx.params(serde_json::json!({"admin": req.admin}));
        ctx.require_admin()?;
        validate_name("name", &req.name)?;
        let password_hash = match &req.password {
            Some(p) => {
                auth::check_password(&req.name, p).map_err(|m| Invalid::new("password", m))?;
                Some(auth::hash_password(p).map_err(|e| Error::from(anyhow::anyhow!(e)))?)
            }
            None => None,
        };
        let u = UserRecord {
            id: new_id("user"),
            name: req.name.clone(),
            password_hash,
            is_admin: req.admin,
            created_at: now(),
        };
        if let Err(e) = self.store.insert_user(&u).await {
            if hostel_store::is_unique_violation(&e) {
                return Err(Error::conflict_field(
                    "name",
                    format!("a user named {:?} exists already", req.name),
                ));
            }
            return Err(e.into());
        }
        self.user_view(u).await
    }

    pub async fn users(&self, ctx: &Ctx) -> Res<Vec<User>> {
        ctx.require_admin()?;
        let mut out = Vec::new();
        for u in self.store.users().await? {
            out.push(self.user_view(u).await?);
        }
        Ok(out)
    }

    pub async fn delete_user(&self, ctx: &Ctx, name: &str) -> Res<()> {
        ctx.require_admin()?;
        let c = ctx.caller()?;
        let u = self.user_named(name).await?;
        if u.id == c.user_id {
            return Err(Error::conflict("you cannot delete yourself"));
        }
        let owned = self.store.delete_user_if_unused(&u.id).await?;
        if !owned.is_empty() {
            return Err(Error::conflict(format!(
                "user {name:?} owns {}: give those VMs to someone else (`hostel chown`) or delete them first",
                owned.join(", ")
            )));
        }
        // Consoles opened with what was just taken away end now.
        self.recheck_consoles().await;
        Ok(())
    }

    /// Sets a password: an admin for anyone, a user for themselves.
    pub async fn set_password(
        &self,
        ctx: &Ctx,
        name: Option<&str>,
        req: PasswordRequest,
    ) -> Res<()> {
        let c = ctx.caller()?;
        let target = name.unwrap_or(&c.user_name);
        if target != c.user_name && !c.is_admin {
            return Err(forbidden("only an admin may set another user's password"));
        }
        let u = self.user_named(target).await?;
        if target == c.user_name && u.password_hash.is_some() {
            // A token alone does not let its holder take the account over: changing your
            // own password takes the current one, checked like a login.
            let Some(current) = req.current_password.clone() else {
                return Err(Invalid::new(
                    "current_password",
                    "changing your own password takes the current one: give it too \
                     (`--current-password-file`)",
                )
                .into());
            };
            self.check_own_password(
                &u,
                current,
                "current_password",
                "the current password is wrong: nothing was changed",
            )
            .await?;
        }
        auth::check_password(&u.name, &req.password).map_err(|m| Invalid::new("password", m))?;
        let h = auth::hash_password(&req.password).map_err(|e| Error::from(anyhow::anyhow!(e)))?;
        self.store.set_user_password(&u.id, &h).await?;
        // The password's browser sessions end with it (but the one changing it): a reset
        // locks out whoever logged in with the old one. API tokens stay; revoke those
        // with `hostel token revoke`.
        let keep = (target == c.user_name).then_some(c.token_name.as_str());
        for t in self.store.tokens_of(&u.id).await? {
            if t.session.is_some() && t.revoked_at.is_none() && Some(t.name.as_str()) != keep {
                self.store.revoke_token(&t.id, now()).await?;
            }
        }
        self.recheck_consoles().await;
        if u.name == ADMIN_USER {
            // The first password is no longer the one in force.
            let _ = std::fs::remove_file(self.cfg.data_dir.join(INITIAL_ADMIN_PASSWORD));
        }
        Ok(())
    }

    /// Checks a user's own password, as a login does (the same lock-out after wrong
    /// ones), before something a token alone may not do; a wrong one is refused as
    /// `field` with `wrong`.
    async fn check_own_password(
        &self,
        u: &UserRecord,
        given: String,
        field: &str,
        wrong: &str,
    ) -> Res<()> {
        let key = format!("user:{}", u.name);
        if let Some(wait) = self.logins.locked(&key) {
            return Err(Error::rate_limited(
                format!("too many wrong passwords: try again in {wait} s"),
                wait,
            ));
        }
        self.logins.fail(&key);
        let who = u.clone();
        let ok = tokio::task::spawn_blocking(move || auth::verify_password(&who, &given))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(Invalid::new(field, wrong).into());
        }
        self.logins.clear(&key);
        Ok(())
    }

    // ---- groups ----

    async fn group_view(&self, g: GroupRecord) -> Res<Group> {
        Ok(Group {
            members: self.store.members_of(&g.id).await?,
            name: g.name,
            created_at: g.created_at.to_string(),
        })
    }

    pub async fn create_group(&self, ctx: &Ctx, req: CreateGroupRequest) -> Res<Group> {
        ctx.target(&req.name, None);
        ctx.require_admin()?;
        validate_name("name", &req.name)?;
        let g = GroupRecord {
            id: new_id("grp"),
            name: req.name.clone(),
            created_at: now(),
        };
        if let Err(e) = self.store.insert_group(&g).await {
            if hostel_store::is_unique_violation(&e) {
                return Err(Error::conflict_field(
                    "name",
                    format!("a group named {:?} exists already", req.name),
                ));
            }
            return Err(e.into());
        }
        self.group_view(g).await
    }

    /// Admins see every group; users the groups they are in.
    pub async fn groups(&self, ctx: &Ctx) -> Res<Vec<Group>> {
        let c = ctx.caller()?;
        let mut out = Vec::new();
        for g in self.store.groups().await? {
            if c.is_admin || c.group_ids.contains(&g.id) {
                out.push(self.group_view(g).await?);
            }
        }
        Ok(out)
    }

    pub async fn delete_group(&self, ctx: &Ctx, name: &str) -> Res<()> {
        ctx.require_admin()?;
        let g = self.group_named(name).await?;
        let used = self.store.delete_group_if_unused(&g.id).await?;
        if !used.is_empty() {
            return Err(Error::conflict(format!(
                "group {name:?} owns or administers {}: change their owners first",
                used.join(", ")
            )));
        }
        // Consoles opened with what was just taken away end now.
        self.recheck_consoles().await;
        Ok(())
    }

    pub async fn add_member(&self, ctx: &Ctx, group: &str, req: MemberRequest) -> Res<Group> {
        ctx.params(serde_json::json!({"user": req.user}));
        ctx.require_admin()?;
        let g = self.group_named(group).await?;
        let u = self.user_named(&req.user).await?;
        if let Err(e) = self.store.add_member(&g.id, &u.id).await {
            if hostel_store::is_unique_violation(&e) {
                return Err(Error::conflict(format!(
                    "{} is in group {group:?} already",
                    req.user
                )));
            }
            return Err(e.into());
        }
        self.group_view(g).await
    }

    pub async fn remove_member(&self, ctx: &Ctx, group: &str, req: MemberRequest) -> Res<Group> {
        ctx.params(serde_json::json!({"user": req.user}));
        ctx.require_admin()?;
        let g = self.group_named(group).await?;
        let u = self.user_named(&req.user).await?;
        if !self.store.remove_member(&g.id, &u.id).await? {
            return Err(Error::not_found(
                "member",
                &req.user,
                format!("{} is not in group {group:?}", req.user),
            ));
        }
        // Consoles opened with what was just taken away end now.
        self.recheck_consoles().await;
        self.group_view(g).await
    }

    // ---- tokens ----

    /// A browser session's token: named `web-` and a random tag, good for
    /// [`auth::SESSION_LIFETIME`] at most.
    async fn new_session(&self, user: &UserRecord, client: &str, source: &str) -> Res<NewToken> {
        // Sessions that ended (revoked or expired) a day ago are forgotten here, so that
        // logins do not pile rows up.
        let day_ago = now() + time::Duration::days(-1);
        for t in self.store.tokens_of(&user.id).await? {
            let ended = t.revoked_at.or(t.expires_at).filter(|e| *e <= day_ago);
            if t.session.is_some() && ended.is_some() {
                self.store.delete_token(&t.id).await?;
            }
        }
        let id = new_id("tok");
        let secret = auth::new_secret();
        let name = format!("web-{}", &id[4..12]);
        let client: String = client
            .chars()
            .filter(|c| !c.is_control())
            .take(120)
            .collect();
        let t = TokenRecord {
            id: id.clone(),
            user_id: user.id.clone(),
            name: name.clone(),
            secret_hash: auth::hash_secret(&secret),
            read_only: false,
            expires_at: Some(now() + auth::SESSION_LIFETIME),
            revoked_at: None,
            created_at: now(),
            last_used_at: None,
            session: Some(format!("{client} from {source}")),
        };
        self.store.insert_token(&t).await?;
        Ok(NewToken {
            name,
            token: auth::format_token(&id, &secret),
            read_only: false,
            expires_at: t.expires_at.map(|e| e.to_string()),
            expiry_inherited: false,
        })
    }

    async fn new_token(
        &self,
        user: &UserRecord,
        name: &str,
        read_only: bool,
        expires_in_days: Option<u32>,
        expires_at: Option<String>,
    ) -> Res<NewToken> {
        validate_name("name", name)?;
        if expires_in_days == Some(0) {
            return Err(Invalid::new("expires", "a token must live at least one day").into());
        }
        if expires_in_days.is_some_and(|d| d > 3660) {
            return Err(Invalid::new("expires", "a token lives at most 3660 days").into());
        }
        let expires_at = match &expires_at {
            Some(at) => {
                let t = Timestamp::parse(at).map_err(|_| {
                    Invalid::new("expires_at", format!("{at:?} is not an RFC 3339 time"))
                })?;
                if t <= now() {
                    return Err(Invalid::new("expires_at", format!("{at} is in the past")).into());
                }
                Some(t)
            }
            None => expires_in_days.map(in_days),
        };
        let id = new_id("tok");
        let secret = auth::new_secret();
        let t = TokenRecord {
            id: id.clone(),
            user_id: user.id.clone(),
            name: name.into(),
            secret_hash: auth::hash_secret(&secret),
            read_only,
            expires_at,
            revoked_at: None,
            created_at: now(),
            last_used_at: None,
            session: None,
        };
        if let Err(e) = self.store.insert_token(&t).await {
            if hostel_store::is_unique_violation(&e) {
                return Err(Error::conflict_field(
                    "name",
                    format!(
                        "{} has a token named {name:?} already: choose another name, or revoke it",
                        user.name
                    ),
                ));
            }
            return Err(e.into());
        }
        Ok(NewToken {
            name: name.into(),
            token: auth::format_token(&id, &secret),
            read_only,
            expires_at: expires_at.map(|t| t.to_string()),
            expiry_inherited: false,
        })
    }

    /// The user a token or key request is about: oneself, or (admins) anyone.
    async fn subject(&self, ctx: &Ctx, user: Option<&str>) -> Res<UserRecord> {
        let c = ctx.caller()?;
        match user {
            Some(u) if u != c.user_name => {
                if !c.is_admin {
                    return Err(forbidden(
                        "only an admin may manage another user's tokens and keys",
                    ));
                }
                self.user_named(u).await
            }
            _ => self.user_named(&c.user_name).await,
        }
    }

    pub async fn create_token(
        &self,
        ctx: &Ctx,
        user: Option<&str>,
        req: CreateTokenRequest,
    ) -> Res<NewToken> {
        ctx.target(&req.name, None);
        ctx.params(serde_json::json!({"user": user, "read_only": req.read_only, "expires_in_days": req.expires_in_days}));
        let u = self.subject(ctx, user).await?;
        // A token cannot make one that outlives it (a stolen short-lived token must not
        // become a permanent one): one asked for without an expiry gets its maker's.
        let c = ctx.caller()?;
        let mut expires_at = req.expires_at.clone();
        let mut inherited = false;
        // The caller's password proves more than the token: with it, the new token may
        // outlive this one (how a browser session, which lasts hours, makes an API
        // token for days).
        let proven = match req.password.clone() {
            Some(p) => {
                let me = self.user_named(&c.user_name).await?;
                self.check_own_password(
                    &me,
                    p,
                    "password",
                    "the password is wrong: no token was made",
                )
                .await?;
                true
            }
            None => false,
        };
        if let Some(limit) = c.token_expires_at.filter(|_| !proven) {
            // Compared as times, whatever offset the text is written with.
            let asked = match (&req.expires_at, req.expires_in_days) {
                // Text that is no time passes here: `new_token` refuses it as such.
                (Some(at), _) => Some(Timestamp::parse(at).unwrap_or(limit)),
                (None, Some(d)) => Some(in_days(d.min(3660))),
                (None, None) => None,
            };
            match asked {
                None => {
                    expires_at = Some(limit.to_string());
                    inherited = true;
                }
                Some(a) if a > limit => {
                    return Err(Invalid::new(
                        "expires",
                        format!(
                            "the token you use expires at {limit}: a token it makes must expire \
                             by then (give an earlier --expires-at, or none to expire with it), \
                             or log in again"
                        ),
                    )
                    .into());
                }
                Some(_) => {}
            }
        }
        let mut t = self
            .new_token(
                &u,
                &req.name,
                req.read_only,
                req.expires_in_days,
                expires_at,
            )
            .await?;
        t.expiry_inherited = inherited;
        Ok(t)
    }

    pub async fn tokens(&self, ctx: &Ctx, user: Option<&str>) -> Res<Vec<TokenInfo>> {
        let u = self.subject(ctx, user).await?;
        Ok(self
            .store
            .tokens_of(&u.id)
            .await?
            .into_iter()
            .map(|t| TokenInfo {
                name: t.name,
                read_only: t.read_only,
                expires_at: t.expires_at.map(|t| t.to_string()),
                revoked: t.revoked_at.is_some(),
                created_at: t.created_at.to_string(),
                last_used_at: t.last_used_at.map(|t| t.to_string()),
                session: t.session,
            })
            .collect())
    }

    pub async fn revoke_token(&self, ctx: &Ctx, user: Option<&str>, name: &str) -> Res<()> {
        let u = self.subject(ctx, user).await?;
        let t = self
            .store
            .tokens_of(&u.id)
            .await?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| {
                Error::not_found(
                    "token",
                    name,
                    format!("{} has no token named {name:?}", u.name),
                )
            })?;
        self.store.revoke_token(&t.id, now()).await?;
        // Consoles opened with what was just taken away end now.
        self.recheck_consoles().await;
        Ok(())
    }

    // ---- SSH keys ----

    pub async fn add_key(&self, ctx: &Ctx, user: Option<&str>, req: AddKeyRequest) -> Res<SshKey> {
        ctx.target(&req.name, None);
        ctx.params(serde_json::json!({"user": user}));
        let u = self.subject(ctx, user).await?;
        validate_name("name", &req.name)?;
        let key = crate::boot::check_ssh_key(&req.public_key).map_err(|mut e| {
            e.field = "public_key".into();
            e
        })?;
        let k = SshKeyRecord {
            id: new_id("key"),
            user_id: u.id.clone(),
            name: req.name.clone(),
            public_key: key,
            created_at: now(),
        };
        if let Err(e) = self.store.insert_ssh_key(&k).await {
            if hostel_store::is_unique_violation(&e) {
                return Err(Error::conflict_field(
                    "name",
                    format!("{} has a key named {:?} already", u.name, req.name),
                ));
            }
            return Err(e.into());
        }
        Ok(SshKey {
            name: k.name,
            public_key: k.public_key,
            created_at: k.created_at.to_string(),
        })
    }

    pub async fn keys(&self, ctx: &Ctx, user: Option<&str>) -> Res<Vec<SshKey>> {
        let u = self.subject(ctx, user).await?;
        Ok(self
            .store
            .ssh_keys_of(&u.id)
            .await?
            .into_iter()
            .map(|k| SshKey {
                name: k.name,
                public_key: k.public_key,
                created_at: k.created_at.to_string(),
            })
            .collect())
    }

    pub async fn remove_key(&self, ctx: &Ctx, user: Option<&str>, name: &str) -> Res<()> {
        let u = self.subject(ctx, user).await?;
        if !self.store.delete_ssh_key(&u.id, name).await? {
            return Err(Error::not_found(
                "key",
                name,
                format!("{} has no key named {name:?}", u.name),
            ));
        }
        // Consoles opened with what was just taken away end now.
        self.recheck_consoles().await;
        Ok(())
    }

    // ---- login ----

    /// Checks a password and hands out a new token. Failures are counted per account
    /// and per source address; too many lock both out for a while.
    /// A password login from `source`, recorded in the audit trail either way.
    ///
    /// A failed login is a refusal of its address (`throttle.rs`): over its budget, the
    /// address's logins are refused before any password is checked, and tallied instead
    /// of recorded one by one.
    /// A password login: an API token, or with `browser`, a browser session: a token
    /// noted with the browser it was made from, that ends when idle for
    /// [`auth::SESSION_IDLE`] and at most [`auth::SESSION_LIFETIME`] after the login.
    /// Failures of either count towards the same lock-out.
    pub async fn login(&self, req: LoginRequest, source: &str) -> Res<NewToken> {
        let browser = req.browser.clone();
        self.login_as(req, source, browser.as_deref()).await
    }

    async fn login_as(
        &self,
        req: LoginRequest,
        source: &str,
        session: Option<&str>,
    ) -> Res<NewToken> {
        let requester = Requester::Address(source);
        self.throttle.gate(source)?;
        let user = crate::audit::short(&req.user);
        let r = self.check_login(req, source, session).await;
        if r.is_err() {
            self.throttle.charge(requester);
        }
        self.record_audit(AuditRecord {
            id: new_id("aud"),
            at: now(),
            user_name: Some(user.clone()),
            source: source.to_string(),
            action: if session.is_some() {
                "user.login-web"
            } else {
                "user.login"
            }
            .into(),
            target: Some(user),
            vm_id: None,
            params: None,
            result: if r.is_ok() { "ok" } else { "denied" }.into(),
            error: r.as_ref().err().map(|e| e.message()),
        })
        .await;
        r
    }

    async fn check_login(
        &self,
        req: LoginRequest,
        source: &str,
        session: Option<&str>,
    ) -> Res<NewToken> {
        let keys = [format!("user:{}", req.user), format!("addr:{source}")];
        // No user has a name or a password that long: refused before any lookup or hash.
        if req.user.len() > 63 || req.password.len() > auth::MAX_PASSWORD_BYTES {
            return Err(Error::Unauthorized("wrong user name or password".into()));
        }
        for k in &keys {
            if let Some(wait) = self.logins.locked(k) {
                return Err(Error::rate_limited(
                    format!("too many failed logins: try again in {wait} s"),
                    wait,
                ));
            }
        }
        // Counted as a failure before the check, so that parallel guesses cannot all pass
        // the lock-out; cleared on success.
        for k in &keys {
            self.logins.fail(k);
        }
        let user = self.store.user_by_name(&req.user).await?;
        let password = req.password.clone();
        let candidate = user.clone();
        // Argon2 off the async workers; a dummy check for unknown users, so that timing
        // does not tell which names exist.
        let ok = tokio::task::spawn_blocking(move || match &candidate {
            Some(u) => auth::verify_password(u, &password),
            None => {
                auth::burn_password_check(&password);
                false
            }
        })
        .await
        .unwrap_or(false);
        let Some(user) = user.filter(|_| ok) else {
            return Err(Error::Unauthorized("wrong user name or password".into()));
        };
        for k in &keys {
            self.logins.clear(k);
        }
        if let Some(client) = session {
            return self.new_session(&user, client, source).await;
        }
        let name = req.token_name.clone().unwrap_or_else(|| {
            format!("login-{}", time::OffsetDateTime::now_utc().unix_timestamp())
        });
        self.new_token(
            &user,
            &name,
            false,
            Some(req.expires_in_days.unwrap_or(30)),
            None,
        )
        .await
    }

    // ---- ownership ----

    /// The owner a new VM gets (user id, group id): the caller by default; a group
    /// the caller is in; anyone an admin names. The same rule as giving a VM away.
    pub(crate) async fn create_owner(
        &self,
        ctx: &Ctx,
        owner: Option<&str>,
    ) -> Res<(Option<String>, Option<String>)> {
        let c = ctx.caller()?;
        let Some(owner) = owner.filter(|o| !o.is_empty()) else {
            return Ok((Some(c.user_id.clone()), None));
        };
        let (kind, name) = owner.split_once(':').unwrap_or(("user", owner));
        let (user_id, group_id) = match kind {
            "user" => (Some(self.user_named(name).await?.id), None),
            "group" => (None, Some(self.group_named(name).await?.id)),
            _ => {
                return Err(Invalid::new(
                    "owner",
                    format!("{owner:?}: give user:NAME or group:NAME"),
                )
                .into())
            }
        };
        let own_group = group_id.as_ref().is_some_and(|g| c.group_ids.contains(g));
        let self_ = user_id.as_deref() == Some(c.user_id.as_str());
        if !(c.is_admin || own_group || self_) {
            return Err(forbidden(
                "a VM may be made for yourself or for a group you are in; only an admin \
                 may make one for someone else",
            ));
        }
        Ok((user_id, group_id))
    }

    /// Gives a VM to a user or group: admins to anyone; the owner to a group they are in.
    pub async fn set_owner(&self, ctx: &Ctx, vm_name: &str, req: SetOwnerRequest) -> Res<Vm> {
        ctx.params(serde_json::json!({"owner": req.owner, "admin_group": req.admin_group}));
        let c = ctx.caller()?;
        let (_g, vm) = self.locked_vm(ctx, vm_name).await?;
        let (kind, name) = req.owner.split_once(':').unwrap_or(("user", &req.owner));
        let (user_id, group_id) = match kind {
            "user" => (Some(self.user_named(name).await?.id), None),
            "group" => (None, Some(self.group_named(name).await?.id)),
            _ => {
                return Err(Invalid::new(
                    "owner",
                    format!("{:?}: give user:NAME or group:NAME", req.owner),
                )
                .into())
            }
        };
        let new_key = match (&user_id, &group_id) {
            (Some(u), _) => format!("user:{u}"),
            (None, Some(g)) => format!("group:{g}"),
            _ => unreachable!("an owner is a user or a group"),
        };
        let owner_changes = crate::quota::owner_key(&vm).as_deref() != Some(new_key.as_str());
        if !c.is_admin {
            let to_own_group = group_id.as_ref().is_some_and(|g| c.group_ids.contains(g));
            let is_owner = vm.owner_user_id.as_deref() == Some(c.user_id.as_str())
                || vm
                    .owner_group_id
                    .as_ref()
                    .is_some_and(|g| c.group_ids.contains(g));
            // Naming the owner it has (to change only the administrator group) is no gift.
            if !(is_owner && (to_own_group || !owner_changes)) {
                return Err(forbidden(
                    "only an admin may do this; an owner may give a VM to a group they are in",
                ));
            }
        }
        // The new owner is charged the whole VM (unless it is the same owner).
        let charge = self.vm_charge(&vm).await?;
        let _quota = if owner_changes {
            self.charge(Some(&new_key), &charge).await?
        } else {
            None
        };
        hostel_faults::point("controller.chown.checked").await;
        let admin_group = match req.admin_group.as_deref() {
            None => vm.admin_group_id.clone(),
            Some("") => None,
            // A group the caller is not in would get rights over the VM it never asked
            // for (and the answer would tell which groups exist): admins only.
            Some(g) if !c.is_admin => match self.store.group_by_name(g).await? {
                Some(group) if c.group_ids.contains(&group.id) => Some(group.id),
                _ => {
                    return Err(forbidden(&format!(
                        "you are not in a group named {g:?}: a VM's administrator group must \
                         be one of yours (`hostel group list` shows them); an admin may set any"
                    )))
                }
            },
            Some(g) => Some(self.group_named(g).await?.id),
        };
        let limits_before = self.limits_in_force(&vm).await?;
        self.store
            .set_vm_owner(
                &vm.id,
                user_id.as_deref(),
                group_id.as_deref(),
                admin_group.as_deref(),
            )
            .await?;
        let vm = self
            .store
            .vm_by_id(&vm.id)
            .await?
            .ok_or_else(|| Error::not_found("vm", vm_name, "the VM is gone"))?;
        // Consoles opened with what was just taken away end now, and the new owner starts
        // with a clean console log: not what the previous owner typed and saw.
        self.recheck_consoles().await;
        if owner_changes {
            if let Some(agent) = vm.host_id.as_deref().and_then(|h| self.agent(h)) {
                if let Err(e) = agent.clear_console_log(&vm.id).await {
                    tracing::warn!(vm = %vm.name, "clearing the console log for its new owner failed: {e}");
                }
                // The new owner's default limits hold it from now.
                let limits = self.limits_in_force(&vm).await?;
                if limits != limits_before && vm.state.has_process() {
                    if let Err(e) = agent.set_limits(&vm.id, limits).await {
                        tracing::warn!(vm = %vm.name, "its new owner's default limits wait for its next start: {e}");
                    }
                }
            }
        }
        self.view(&vm, false).await
    }
}
