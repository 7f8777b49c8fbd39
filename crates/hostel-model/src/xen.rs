//! Xen domain config files (`xm` and `xl`, Python-like: `key = 'value'`, numbers and
//! lists, `#` comments), as the hosts Hostel replaces keep them in `/etc/xen/*.cfg`:
//! parsed into their settings, each line Hostel cannot read reported with its number and
//! why. The import (`hostel import-xen`) maps the settings onto a VM.

/// A setting's value.
#[derive(Debug, Clone, PartialEq)]
pub enum XenValue {
    Str(String),
    Int(i64),
    List(Vec<XenValue>),
}

impl XenValue {
    /// A string, or a number as text (`memory = '128'` and `memory = 128` alike).
    pub fn text(&self) -> Option<String> {
        match self {
            XenValue::Str(s) => Some(s.clone()),
            XenValue::Int(n) => Some(n.to_string()),
            XenValue::List(_) => None,
        }
    }

    /// A number, or a string holding one.
    pub fn int(&self) -> Option<i64> {
        match self {
            XenValue::Int(n) => Some(*n),
            XenValue::Str(s) => s.trim().parse().ok(),
            XenValue::List(_) => None,
        }
    }

    /// The strings of a list (a lone string is a list of one).
    pub fn strings(&self) -> Vec<String> {
        match self {
            XenValue::List(v) => v.iter().filter_map(XenValue::text).collect(),
            other => other.text().into_iter().collect(),
        }
    }
}

/// A config file read: its settings in order (with their line numbers) and the lines it
/// could not read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XenConfig {
    pub settings: Vec<(String, XenValue, usize)>,
    /// (line number, the line, why).
    pub unreadable: Vec<(usize, String, String)>,
}

impl XenConfig {
    /// The last value given to `key`.
    pub fn get(&self, key: &str) -> Option<&XenValue> {
        self.settings
            .iter()
            .rev()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v)
    }
}

/// Quote characters: ASCII, and the typographic ones a config copied from a document
/// (the seeds' slides) carries.
fn is_quote(c: char) -> bool {
    matches!(
        c,
        '\'' | '"' | '\u{2018}' | '\u{2019}' | '\u{201c}' | '\u{201d}'
    )
}

/// Reads a config file's text.
pub fn parse(text: &str) -> XenConfig {
    let mut cfg = XenConfig::default();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        let mut stmt = strip_comment(lines[i]).to_string();
        i += 1;
        // A statement goes on while its brackets are open.
        while depth(&stmt) > 0 && i < lines.len() {
            stmt.push(' ');
            stmt.push_str(strip_comment(lines[i]));
            i += 1;
        }
        let t = stmt.trim();
        if t.is_empty() {
            continue;
        }
        let line_no = start + 1;
        let unreadable = |why: &str| (line_no, lines[start].trim().to_string(), why.to_string());
        if t.starts_with("import ") || t.starts_with("from ") {
            cfg.unreadable.push(unreadable(
                "Python code: the import reads settings, not programs",
            ));
            continue;
        }
        let Some((key, value)) = t.split_once('=') else {
            cfg.unreadable
                .push(unreadable("not a `key = value` setting"));
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            cfg.unreadable
                .push(unreadable("not a `key = value` setting"));
            continue;
        }
        match value_of(value.trim()) {
            Some(v) => cfg.settings.push((key.to_string(), v, line_no)),
            None => cfg.unreadable.push(unreadable(
                "a Python expression, not a plain value (a string, a number or a list of them)",
            )),
        }
    }
    cfg
}

/// The line without its comment (a `#` outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q || (is_quote(q) && is_quote(c) && !matches!(q, '\'' | '"')) => {
                quote = None
            }
            Some(_) => {}
            None if is_quote(c) => quote = Some(c),
            None if c == '#' => return &line[..i],
            None => {}
        }
    }
    line
}

/// How many brackets are open at the end of `s` (outside quotes).
fn depth(s: &str) -> i32 {
    let mut d = 0;
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q || (is_quote(c) && !matches!(q, '\'' | '"')) => quote = None,
            Some(_) => {}
            None if is_quote(c) => quote = Some(c),
            None if c == '[' || c == '(' => d += 1,
            None if c == ']' || c == ')' => d -= 1,
            None => {}
        }
    }
    d
}

/// A plain value: a quoted string, an integer, or a list of those; None for anything
/// else (names, arithmetic, `%` formatting, comprehensions).
fn value_of(s: &str) -> Option<XenValue> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let mut items = Vec::new();
        for part in split_top(inner) {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            items.push(value_of(p)?);
        }
        return Some(XenValue::List(items));
    }
    let first = s.chars().next()?;
    if is_quote(first) {
        let rest = &s[first.len_utf8()..];
        let last = rest.chars().last()?;
        if !is_quote(last) {
            return None;
        }
        let inner = &rest[..rest.len() - last.len_utf8()];
        if inner.chars().any(is_quote) {
            return None;
        }
        return Some(XenValue::Str(inner.to_string()));
    }
    s.parse::<i64>().ok().map(XenValue::Int)
}

/// `a, b, [c, d]`'s top-level parts (commas outside quotes and brackets).
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut d = 0;
    let mut quote: Option<char> = None;
    let mut from = 0;
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) if c == q || (is_quote(c) && !matches!(q, '\'' | '"')) => quote = None,
            Some(_) => {}
            None if is_quote(c) => quote = Some(c),
            None if c == '[' => d += 1,
            None if c == ']' => d -= 1,
            None if c == ',' && d == 0 => {
                parts.push(&s[from..i]);
                from = i + 1;
            }
            None => {}
        }
    }
    parts.push(&s[from..]);
    parts
}

/// One `disk = [...]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct XenDisk {
    /// The file or block device on the Xen host (empty: none given).
    pub path: String,
    /// `raw`, `qcow2`, `vhd`, or empty when the entry does not say (a `file:` or `phy:`
    /// is raw).
    pub format: String,
    /// The guest's device (`xvda`, `sda1`, `hdc`).
    pub vdev: String,
    pub writable: bool,
    pub cdrom: bool,
}

/// Reads one disk entry: the `xm` form (`phy:/dev/vg/lv,xvda2,w`, `file:/img,xvda,w`,
/// `tap:aio:/img,xvda,w`, `tap:qcow2:/img,...`, `tap2:tapdisk:aio:/img,...`,
/// `/img,hdc:cdrom,r`) or the `xl` form (`format=raw, vdev=xvda, access=rw,
/// target=/img`).
pub fn disk(entry: &str) -> Result<XenDisk, String> {
    let parts: Vec<&str> = entry.split(',').map(str::trim).collect();
    if parts.iter().any(|p| p.contains('=')) {
        let mut d = XenDisk {
            path: String::new(),
            format: String::new(),
            vdev: String::new(),
            writable: true,
            cdrom: false,
        };
        for p in &parts {
            match p.split_once('=') {
                Some(("target", v)) => d.path = v.to_string(),
                Some(("format", v)) => d.format = v.to_string(),
                Some(("vdev", v)) => d.vdev = v.to_string(),
                Some(("access" | "mode", v)) => d.writable = v.contains('w'),
                Some(("devtype", v)) => d.cdrom = v == "cdrom",
                Some(_) => {}
                None if *p == "cdrom" => d.cdrom = true,
                None if d.path.is_empty() && !p.is_empty() => d.path = p.to_string(),
                None => {}
            }
        }
        return Ok(d);
    }
    let [source, vdev, mode] = parts.as_slice() else {
        return Err(format!(
            "{entry:?}: a disk is `SOURCE,DEVICE,MODE` (phy:/dev/vg/lv,xvda,w)"
        ));
    };
    let (format, path) = if let Some(p) = source.strip_prefix("phy:") {
        ("raw", p)
    } else if let Some(p) = source.strip_prefix("file:") {
        ("raw", p)
    } else if let Some(rest) = source
        .strip_prefix("tap2:tapdisk:")
        .or_else(|| source.strip_prefix("tap:"))
    {
        match rest.split_once(':') {
            Some(("aio" | "sync", p)) => ("raw", p),
            Some(("qcow" | "qcow2", p)) => ("qcow2", p),
            Some(("vhd", p)) => ("vpc", p),
            Some((other, _)) => {
                return Err(format!("{entry:?}: tap driver {other:?} is not known"))
            }
            None => ("raw", rest),
        }
    } else {
        ("", *source)
    };
    let (vdev, cdrom) = match vdev.split_once(':') {
        Some((dev, "cdrom")) => (dev, true),
        _ => (*vdev, false),
    };
    Ok(XenDisk {
        path: path.to_string(),
        format: format.to_string(),
        vdev: vdev.to_string(),
        writable: mode.contains('w'),
        cdrom,
    })
}

/// One `vif = [...]` entry's MAC, IP and bridge (`mac=00:16:3E:..., ip=..., bridge=...`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XenVif {
    pub mac: Option<String>,
    pub ip: Option<String>,
    pub bridge: Option<String>,
    /// Settings the import does not carry over (`script=`, `vifname=`, ...).
    pub ignored: Vec<String>,
}

pub fn vif(entry: &str) -> XenVif {
    let mut v = XenVif::default();
    for p in entry
        .split([',', ' '])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match p.split_once('=') {
            Some(("mac", m)) => v.mac = Some(m.to_ascii_lowercase()),
            Some(("ip", i)) => v.ip = i.split_whitespace().next().map(String::from),
            Some(("bridge", b)) => v.bridge = Some(b.to_string()),
            _ => v.ignored.push(p.to_string()),
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MIT's Invirt example, as the seed's slides print it (typographic quotes).
    const INVIRT: &str = "name = \u{2019}myvm\u{2019}\n\
kernel = \u{2019}/boot/vmlinuz-2.6.18-6-xen-amd64\u{2019}\n\
ramdisk = \u{2019}/boot/initrd.img-2.6.18-6-xen-amd64\u{2019}\n\
memory = \u{2019}128\u{2019}\n\
disk = [ \u{2019},sda1,w\u{2019} ]\n\
vif = [ \u{2019}mac=00:16:3E:CF:CF:CC, ip=18.181.0.142\u{2019} ]\n\
on_poweroff = \u{2019}destroy\u{2019}\n\
on_reboot = \u{2019}restart\u{2019}\n\
on_crash = \u{2019}restart\u{2019}\n";

    /// The Marseille example: pygrub, a list over several lines with a trailing comma.
    const ORIGAMI: &str = "bootloader = '/usr/lib/xen-default/bin/pygrub'  \n\
vcpus      = '1'  \n\
memory    = '128'  \n\
root      = '/dev/xvda2 ro'  \n\
disk      = [  \n\
            'phy:/dev/cpt/origami.cpt.univ-mrs.fr-disk,xvda2,w',  # the root\n\
            'phy:/dev/cpt/origami.cpt.univ-mrs.fr-swap,xvda1,w',  \n\
            ]  \n\
vif       = [ 'ip=139.124.7.164,mac=00:16:3E:78:20:21' ]\n";

    #[test]
    fn the_seeds_examples_are_read() {
        let c = parse(INVIRT);
        assert!(c.unreadable.is_empty(), "{:?}", c.unreadable);
        assert_eq!(c.get("name").unwrap().text().unwrap(), "myvm");
        assert_eq!(c.get("memory").unwrap().int(), Some(128));
        assert_eq!(c.get("disk").unwrap().strings(), vec![",sda1,w"]);
        let v = vif(&c.get("vif").unwrap().strings()[0]);
        assert_eq!(v.mac.as_deref(), Some("00:16:3e:cf:cf:cc"));
        assert_eq!(v.ip.as_deref(), Some("18.181.0.142"));

        let c = parse(ORIGAMI);
        assert!(c.unreadable.is_empty(), "{:?}", c.unreadable);
        let disks = c.get("disk").unwrap().strings();
        assert_eq!(disks.len(), 2);
        let d = disk(&disks[0]).unwrap();
        assert_eq!(d.path, "/dev/cpt/origami.cpt.univ-mrs.fr-disk");
        assert_eq!(
            (d.vdev.as_str(), d.format.as_str(), d.writable),
            ("xvda2", "raw", true)
        );
        assert_eq!(c.get("vcpus").unwrap().int(), Some(1));
    }

    #[test]
    fn python_code_is_reported_by_line() {
        let c = parse(
            "# -*- mode: python; -*-\nfrom invirt.database import models\n\n\
             machine = models.Machine.get(name=machine_name)\nmemory = machine.memory\n\
             vif = [ 'mac=%s, ip=%s' % (n.mac_addr, n.ip) for n in machine.nics ]\nvcpus = 2\n",
        );
        let lines: Vec<usize> = c.unreadable.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(lines, vec![2, 4, 5, 6], "{:?}", c.unreadable);
        assert_eq!(c.get("vcpus").unwrap().int(), Some(2));
    }

    #[test]
    fn every_disk_form_is_read() {
        let d = disk("tap:aio:/srv/xen/web.img,xvda,w").unwrap();
        assert_eq!(
            (d.path.as_str(), d.format.as_str()),
            ("/srv/xen/web.img", "raw")
        );
        let d = disk("tap:qcow2:/srv/xen/web.qcow2,xvdb,r").unwrap();
        assert_eq!((d.format.as_str(), d.writable), ("qcow2", false));
        let d = disk("file:/srv/cd.iso,hdc:cdrom,r").unwrap();
        assert!(d.cdrom && d.vdev == "hdc");
        let d = disk("format=raw, vdev=xvda, access=rw, target=/dev/vg/web").unwrap();
        assert_eq!(
            (d.path.as_str(), d.vdev.as_str(), d.writable),
            ("/dev/vg/web", "xvda", true)
        );
        assert!(disk("tap:weird:/x,xvda,w").is_err());
        assert!(disk("just-a-path").is_err());
    }
}
