//! The web UI's account and admin pages, driven over HTTP like a browser (cookies kept
//! by hand, redirects followed, forms posted with the page's CSRF token) against a real
//! controller serving the web UI and the API, with SIMULATED hosts (no QEMU). Each test
//! checks what a person would see and what the API then says.

mod common;

use common::{certs, Certs};
use hostel_api::public::*;
use hostel_controller::agent_client::{AgentClient, ClientTls};
use hostel_controller::testing::{TestController, ADMIN_TOKEN};
use hostel_controller::Controller;
use hostel_simagent::SimHost;
use reqwest::StatusCode;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PASSWORD: &str = "a long enough password";

/// A controller serving the web UI and the API on a loopback port, with simulated hosts
/// whose agents can be stopped.
struct Site {
    c: Arc<Controller>,
    base: String,
    /// Ends each simulated host's agent server (its connections after 2 s).
    stops: Vec<Option<tokio::sync::oneshot::Sender<()>>>,
    _t: TestController,
}

impl Site {
    async fn new(hosts: usize, stale_after: Duration) -> Site {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs: Certs = certs();
        let t = TestController::with_config(|c| c.stale_after = stale_after).await;
        let tls = || ClientTls {
            ca_pem: certs.ca.clone(),
            cert_pem: certs.controller.0.clone(),
            key_pem: certs.controller.1.clone(),
        };
        t.c.set_agent_tls(tls()).unwrap();
        let mut stops = Vec::new();
        for i in 0..hosts {
            let sim = Arc::new(SimHost::new(i, hosts, t.dir.path().join("no-fleet")));
            let (url, stop) = serve_sim(&certs, sim);
            t.c.add_host(AgentClient::new(&url, &tls()).unwrap())
                .await
                .unwrap();
            stops.push(Some(stop));
        }
        let api = hostel_controller::router(t.c.clone());
        let app = hostel_web::router(api.clone()).merge(api);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        let site = Site {
            c: t.c.clone(),
            base,
            stops,
            _t: t,
        };
        site.user("alice", true).await;
        site.user("bob", false).await;
        site
    }

    /// A user with a password, made as an admin would.
    async fn user(&self, name: &str, admin: bool) {
        self.c
            .create_user(
                &self._t.admin,
                CreateUserRequest {
                    name: name.into(),
                    password: Some(PASSWORD.into()),
                    admin,
                },
            )
            .await
            .unwrap();
    }

    /// A browser logged in as `user` through the login form.
    async fn browser(&self, user: &str) -> Browser {
        let b = Browser::new(&self.base);
        let page = b
            .post(
                "/login",
                &[("user", user), ("password", PASSWORD), ("next", "/account")],
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(page.path, "/account");
        b
    }

    /// The API as `hostel` calls it, with the admin's token.
    async fn api<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }
}

/// Serves a SIMULATED host through the real agent router; its URL, and what stops it.
fn serve_sim(certs: &Certs, sim: Arc<SimHost>) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let tls = hostel_agent::TlsFiles {
        cert_pem: certs.agent.0.clone(),
        key_pem: certs.agent.1.clone(),
        client_ca_pem: certs.ca.clone(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(hostel_agent::serve_router(
        hostel_agent::api_router(sim),
        listener,
        tls,
        async move {
            let _ = rx.await;
        },
    ));
    (url, tx)
}

/// What a browser ends up showing after a request and its redirects.
struct Page {
    status: StatusCode,
    /// The path (and query) of the last request.
    path: String,
    body: String,
}

impl Page {
    /// The page's CSRF token (in its `<meta name="csrf-token">`).
    fn csrf(&self) -> String {
        let at = self
            .body
            .find(r#"<meta name="csrf-token" content=""#)
            .expect("a page for a logged-in user has a CSRF token");
        let rest = &self.body[at + r#"<meta name="csrf-token" content=""#.len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }

    /// The opening tag of the table row for `host`.
    fn host_row(&self, host: &str) -> &str {
        let at = self
            .body
            .find(&format!(r#"data-host="{host}""#))
            .unwrap_or_else(|| panic!("no row for {host}"));
        let start = self.body[..at].rfind("<tr").unwrap();
        let end = self.body[start..].find("</tr>").unwrap();
        &self.body[start..start + end]
    }
}

/// A browser: keeps cookies as a browser would (by hand), follows redirects.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: Mutex<HashMap<String, String>>,
}

impl Browser {
    fn new(base: &str) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.into(),
            cookies: Mutex::default(),
        }
    }

    fn keep_cookies(&self, r: &reqwest::Response) {
        let mut jar = self.cookies.lock().unwrap();
        for set in r.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, attrs) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || attrs.contains("Max-Age=0") {
                jar.remove(name);
            } else {
                jar.insert(name.into(), value.into());
            }
        }
    }

    fn cookie_header(&self) -> String {
        let jar = self.cookies.lock().unwrap();
        jar.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn request(&self, path: &str, form: Option<&[(&str, &str)]>) -> Page {
        let mut path = path.to_string();
        let mut form = form;
        for _ in 0..5 {
            let url = format!("{}{path}", self.base);
            let req = match form {
                Some(f) => self.http.post(&url).form(f),
                None => self.http.get(&url),
            };
            let r = req
                .header("cookie", self.cookie_header())
                .send()
                .await
                .unwrap();
            self.keep_cookies(&r);
            let status = r.status();
            if status.is_redirection() {
                path = r.headers()["location"].to_str().unwrap().to_string();
                form = None;
                continue;
            }
            return Page {
                status,
                path,
                body: r.text().await.unwrap(),
            };
        }
        panic!("too many redirects from {path}")
    }

    async fn get(&self, path: &str) -> Page {
        self.request(path, None).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.request(path, Some(form)).await
    }

    /// Posts a form of the page at `from` (with that page's CSRF token); the page the
    /// browser then shows.
    async fn submit(&self, from: &str, action: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.get(from).await.csrf();
        let mut form: Vec<(&str, &str)> = vec![("csrf", &csrf)];
        form.extend_from_slice(fields);
        self.post(action, &form).await
    }
}

/// Every script and stylesheet is a file of the site's own: no inline script, no style
/// attribute (the CSP would block them).
fn assert_no_inline_code(page: &Page) {
    for (i, _) in page.body.match_indices("<script") {
        let tag = &page.body[i..i + page.body[i..].find('>').unwrap()];
        assert!(
            tag.contains(" src=\"/"),
            "{}: inline script {tag}",
            page.path
        );
    }
    assert!(
        !page.body.contains(" style="),
        "{}: a style attribute",
        page.path
    );
    assert!(
        !page.body.contains("<style"),
        "{}: a style element",
        page.path
    );
}

#[tokio::test]
async fn every_page_renders_for_an_admin_and_the_admin_pages_refuse_others() {
    let site = Site::new(1, Duration::from_secs(120)).await;
    let alice = site.browser("alice").await;
    for path in [
        "/account",
        "/admin/hosts",
        "/admin/users",
        "/admin/groups",
        "/admin/quotas",
        "/admin/quotas?owner=user:bob",
        "/admin/images",
        "/admin/networks",
        "/admin/pools",
        "/admin/audit",
        "/admin/audit?result=ok&user=alice&since=2020-01-01T00:00",
    ] {
        let p = alice.get(path).await;
        assert_eq!(p.status, StatusCode::OK, "{path}: {}", p.body);
        assert_eq!(p.path, path);
        assert!(p.body.contains("<h1>"), "{path}");
        assert_no_inline_code(&p);
    }
    // The admin's navigation leads to every admin page, pools included.
    let nav = alice.get("/admin/hosts").await.body;
    for link in [
        "/admin/users",
        "/admin/images",
        "/admin/networks",
        "/admin/pools",
        "/admin/audit",
    ] {
        assert!(nav.contains(&format!("href=\"{link}\"")), "{link}");
    }

    // A build through the form goes to its task's page, which follows it to the end.
    let p = alice
        .submit(
            "/admin/images",
            "/admin/images/do/build",
            &[("recipe", "tiny")],
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(p.path.starts_with("/admin/tasks/"), "{}", p.path);
    assert!(p.body.contains("<progress"), "{}", p.body);
    let task_page = p.path.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = alice.get(&task_page).await;
        if p.body.contains("<strong>succeeded</strong>") {
            // Over: the page stops re-reading itself, and the bar is full.
            assert!(!p.body.contains("hx-trigger"), "{}", p.body);
            assert!(p.body.contains(r#"value="100""#), "{}", p.body);
            break;
        }
        assert!(p.body.contains(r#"hx-trigger="every 1s""#), "{}", p.body);
        assert!(Instant::now() < deadline, "{}", p.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let images = alice.get("/admin/images").await.body;
    assert!(images.contains("<th scope=\"row\">tiny</th>"), "{images}");

    // Bob is no admin: the API refuses him these lists, and the pages show that.
    let bob = site.browser("bob").await;
    for path in [
        "/admin/hosts",
        "/admin/users",
        "/admin/groups",
        "/admin/quotas",
        "/admin/pools",
    ] {
        let p = bob.get(path).await;
        assert!(
            p.status == StatusCode::FORBIDDEN || p.status == StatusCode::NOT_FOUND,
            "{path}: {} {}",
            p.status,
            p.body
        );
    }
    // What he may read (images, networks, his own VMs' audit) he sees, without forms.
    let p = bob.get("/admin/images").await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(!p.body.contains("/admin/images/do/build"));
    // And a form he posts anyway is refused by the API, changing nothing.
    let p = bob
        .submit(
            "/account",
            "/admin/accounts/do/create-group",
            &[("name", "bobs")],
        )
        .await;
    assert!(p.body.contains("flash err"), "{}", p.body);
    let groups: Vec<Group> = site.api("/api/v1/groups").await;
    assert!(groups.iter().all(|g| g.name != "bobs"));
    assert_eq!(bob.get("/account").await.status, StatusCode::OK);
}

#[tokio::test]
async fn users_groups_and_quotas_made_in_forms_are_what_the_api_says() {
    let site = Site::new(1, Duration::from_secs(120)).await;
    let alice = site.browser("alice").await;
    let p = alice
        .submit(
            "/admin/users",
            "/admin/accounts/do/create-user",
            &[("name", "carol"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(p.path, "/admin/users");
    assert!(p.body.contains("User carol is made."), "{}", p.body);
    let users: Vec<User> = site.api("/api/v1/users").await;
    let carol = users.iter().find(|u| u.name == "carol").expect("carol");
    assert!(!carol.admin);

    let p = alice
        .submit(
            "/admin/groups",
            "/admin/accounts/do/create-group",
            &[("name", "lab")],
        )
        .await;
    assert!(p.body.contains("Group lab is made."), "{}", p.body);
    alice
        .submit(
            "/admin/groups",
            "/admin/accounts/do/add-member",
            &[("group", "lab"), ("user", "carol")],
        )
        .await;
    let groups: Vec<Group> = site.api("/api/v1/groups").await;
    let lab = groups.iter().find(|g| g.name == "lab").expect("lab");
    assert_eq!(lab.members, ["carol"]);

    // Bob's quota: 3 vCPUs and 2 VMs.
    let p = alice
        .submit(
            "/admin/quotas?owner=user:bob",
            "/admin/accounts/do/set-quota",
            &[
                ("owner", "user:bob"),
                ("vcpus_total", "3"),
                ("vms_total", "2"),
                ("ram_total_mib", ""),
            ],
        )
        .await;
    assert_eq!(p.path, "/admin/quotas?owner=user%3Abob");
    assert!(
        p.body.contains("The quota of user:bob is saved."),
        "{}",
        p.body
    );
    let q: Quota = site.api("/api/v1/quotas?owner=user:bob").await;
    assert_eq!(q.limits.vcpus_total, Some(3));
    assert_eq!(q.limits.vms_total, Some(2));
    // An empty field is no limit of bob's own: the defaults' applies.
    let defaults: Quota = site.api("/api/v1/quotas?owner=default").await;
    assert_eq!(q.limits.ram_total_mib, defaults.limits.ram_total_mib);

    // Bob sees it where he makes a VM, and on his account page.
    let bob = site.browser("bob").await;
    let create = bob.get("/vms/new").await;
    assert!(create.body.contains("3 of 3 vCPUs left"), "{}", create.body);
    assert!(create.body.contains("2 of 2 VMs left"), "{}", create.body);
    let account = bob.get("/account").await;
    assert!(
        account.body.contains("3 of 3 vCPUs left"),
        "{}",
        account.body
    );

    // A number that is no number is refused before the API, and nothing changes.
    let p = alice
        .submit(
            "/admin/quotas?owner=user:bob",
            "/admin/accounts/do/set-quota",
            &[("owner", "user:bob"), ("vcpus_total", "lots")],
        )
        .await;
    assert!(p.body.contains("is not a whole number"), "{}", p.body);
    let q: Quota = site.api("/api/v1/quotas?owner=user:bob").await;
    assert_eq!(q.limits.vcpus_total, Some(3));
}

#[tokio::test]
async fn a_form_without_its_csrf_token_is_refused_and_changes_nothing() {
    let site = Site::new(1, Duration::from_secs(120)).await;
    let alice = site.browser("alice").await;
    for form in [
        vec![("name", "mallory"), ("password", PASSWORD)],
        vec![
            ("csrf", "0123456789abcdef0123456789abcdef"),
            ("name", "mallory"),
        ],
    ] {
        let p = alice.post("/admin/accounts/do/create-user", &form).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
        assert!(p.body.contains("CSRF"), "{}", p.body);
    }
    let p = alice
        .post("/admin/accounts/do/create-group", &[("name", "evil")])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let users: Vec<User> = site.api("/api/v1/users").await;
    assert!(users.iter().all(|u| u.name != "mallory"));
    let groups: Vec<Group> = site.api("/api/v1/groups").await;
    assert!(groups.iter().all(|g| g.name != "evil"));
}

/// The name of the session a browser's account page marks as its own.
async fn own_session(b: &Browser) -> String {
    let body = b.get("/account").await.body;
    let badge = body
        .find(r#" <span class="badge">this browser</span>"#)
        .expect("the account page marks this browser's session");
    let start = body[..badge].rfind('>').unwrap() + 1;
    body[start..badge].to_string()
}

#[tokio::test]
async fn revoking_a_session_from_the_account_page_logs_that_browser_out() {
    let site = Site::new(1, Duration::from_secs(120)).await;
    let laptop = site.browser("bob").await;
    let phone = site.browser("bob").await;
    let (on_laptop, on_phone) = (own_session(&laptop).await, own_session(&phone).await);
    assert_ne!(on_laptop, on_phone);
    // Both are listed as sessions, apart from API tokens.
    let account = laptop.get("/account").await.body;
    let sessions =
        &account[account.find("id=\"sessions\"").unwrap()..account.find("id=\"tokens\"").unwrap()];
    assert!(sessions.contains(&on_laptop) && sessions.contains(&on_phone));

    let p = laptop
        .submit(
            "/account",
            "/account/do/revoke-session",
            &[("name", &on_phone)],
        )
        .await;
    assert!(p.body.contains("that browser is logged out"), "{}", p.body);
    // The phone's next request goes to the login page.
    let p = phone.get("/vms").await;
    assert!(p.path.starts_with("/login"), "{}", p.path);
    assert!(p.body.contains("Log in to Hostel"));
    // The laptop still works; revoking its own session logs it out.
    assert_eq!(laptop.get("/account").await.path, "/account");
    let p = laptop
        .submit(
            "/account",
            "/account/do/revoke-session",
            &[("name", &on_laptop)],
        )
        .await;
    assert!(p.path.starts_with("/login"), "{}", p.path);
    assert!(laptop.get("/account").await.path.starts_with("/login"));
}

#[tokio::test]
async fn an_api_token_made_on_the_account_page_is_shown_once_and_works() {
    let site = Site::new(1, Duration::from_secs(120)).await;
    let bob = site.browser("bob").await;
    let p = bob
        .submit(
            "/account",
            "/account/do/create-token",
            &[
                ("name", "ci"),
                ("access", "read-only"),
                ("expires_in_days", "30"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    let at = p
        .body
        .find(r#"id="new-secret""#)
        .expect("the secret is shown");
    let value = &p.body[at..];
    let value = &value[value.find("value=\"").unwrap() + 7..];
    let secret = &value[..value.find('"').unwrap()];
    assert!(secret.starts_with("hostel-"), "{secret}");
    // The next page does not show it again.
    assert!(!bob.get("/account").await.body.contains(secret));
    // It reads, it does not write, and it outlives the session that made it.
    let http = reqwest::Client::new();
    let me: WhoAmI = http
        .get(format!("{}/api/v1/whoami", site.base))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(me.read_only && me.user == "bob");
    let tokens: Vec<TokenInfo> = http
        .get(format!("{}/api/v1/me/tokens", site.base))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ci = tokens.iter().find(|t| t.name == "ci").unwrap();
    let session = tokens.iter().find(|t| t.session.is_some()).unwrap();
    assert!(ci.expires_at > session.expires_at, "{ci:?} {session:?}");
    // Without the password it may not outlive the session: the API says so.
    let p = bob
        .submit(
            "/account",
            "/account/do/create-token",
            &[
                ("name", "longer"),
                ("access", "full"),
                ("expires_in_days", "30"),
            ],
        )
        .await;
    assert!(p.body.contains("flash err"), "{}", p.body);
    assert!(!p.body.contains("id=\"new-secret\""));
}

#[tokio::test]
async fn a_stopped_host_shows_offline_then_stale_and_greyed() {
    let mut site = Site::new(2, Duration::from_millis(1)).await;
    let info: Info = site.api("/api/v1/info").await;
    assert_eq!(info.hosts.len(), 2);
    assert!(info.hosts.iter().all(|h| h.online && !h.stale));
    let alice = site.browser("alice").await;
    let page = alice.get("/admin/hosts").await;
    let gone = info.hosts[1].name.clone();
    assert!(!page.host_row(&gone).contains("stale"), "{}", page.body);
    // The page re-reads its table every 5 s.
    assert!(page.body.contains(r#"hx-trigger="every 5s""#));
    assert!(page.body.contains(r##"hx-select="#hosts-live""##));

    // The second host's agent stops.
    site.stops[1].take().unwrap().send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let host = loop {
        let info: Info = site.api("/api/v1/info").await;
        let h = info.hosts.into_iter().find(|h| h.name == gone).unwrap();
        if !h.online {
            break h;
        }
        assert!(Instant::now() < deadline, "{gone} is still online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(host.stale, "{host:?}");
    let page = alice.get("/admin/hosts").await;
    let row = page.host_row(&gone);
    assert!(row.contains("class=\"host-stale stale\""), "{row}");
    assert!(row.contains("last report"), "{row}");
    let first = page.host_row(&info.hosts[0].name);
    assert!(
        !first.contains("stale") && first.contains(">online<"),
        "{first}"
    );
}

#[tokio::test]
async fn names_with_markup_come_back_escaped() {
    let site = Site::new(1, Duration::from_secs(120)).await;
    let alice = site.browser("alice").await;
    let evil = "<script>alert(1)</script>";
    // A user's name: refused by the API, whose message names it.
    let p = alice
        .submit(
            "/admin/users",
            "/admin/accounts/do/create-user",
            &[("name", evil), ("password", PASSWORD)],
        )
        .await;
    assert!(p.body.contains("flash err"), "{}", p.body);
    assert!(
        p.body.contains("alert(1)"),
        "the message names it: {}",
        p.body
    );
    assert!(!p.body.contains("<script>alert"), "{}", p.body);
    let p = alice.get("/vms/%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    assert_eq!(p.status, StatusCode::NOT_FOUND, "{}", p.body);
    assert!(
        p.body.contains("alert(1)"),
        "the message names it: {}",
        p.body
    );
    assert!(!p.body.contains("<script>alert"), "{}", p.body);
    // A filter typed back into its field is escaped too.
    let p = alice
        .get("/admin/audit?user=%22%3E%3Cscript%3Ealert(2)%3C%2Fscript%3E")
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(p.body.contains("alert(2)"), "{}", p.body);
    assert!(!p.body.contains("<script>alert"), "{}", p.body);
}

/// Waits until the task page at `path` says the task succeeded; its body.
async fn task_succeeds(b: &Browser, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = b.get(path).await;
        if p.body.contains("<strong>succeeded</strong>") {
            return p.body;
        }
        assert!(!p.body.contains("<strong>failed</strong>"), "{}", p.body);
        assert!(Instant::now() < deadline, "{}", p.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn hosts_are_drained_rebalanced_and_vms_moved_from_the_pages() {
    let site = Site::new(2, Duration::from_secs(120)).await;
    let alice = site.browser("alice").await;
    let p = alice
        .submit(
            "/admin/images",
            "/admin/images/do/build",
            &[("recipe", "tiny")],
        )
        .await;
    task_succeeds(&alice, &p.path).await;
    let hosts: Vec<HostInfo> = site.api("/api/v1/hosts").await;
    let (a, b) = (hosts[0].name.clone(), hosts[1].name.clone());
    alice
        .submit(
            "/admin/hosts",
            "/admin/hosts/do/tags",
            &[("name", &a), ("tags", "a")],
        )
        .await;
    let admin = &site._t.admin;
    for n in ["w1", "w2"] {
        let req: CreateVmRequest = serde_json::from_value(
            serde_json::json!({"name": n, "image": "tiny", "host_tags": ["a"]}),
        )
        .unwrap();
        site.c.create_vm(admin, req).await.unwrap();
    }
    let on = |n: &'static str| {
        let c = site.c.clone();
        async move {
            c.store
                .vm_by_name(n)
                .await
                .unwrap()
                .unwrap()
                .host_id
                .unwrap()
        }
    };
    // Both on a, none on b: the plan moves one, and applies nothing yet.
    let p = alice
        .submit(
            "/admin/hosts",
            "/admin/hosts/do/rebalance",
            &[("dry_run", "on")],
        )
        .await;
    assert_eq!(p.path, "/admin/hosts");
    assert!(p.body.contains("The plan (not applied)"), "{}", p.body);
    // What each host's QEMU offers a moving VM.
    assert!(
        p.body.contains("machine pc-q35-10.0, receives post-copy")
            && p.body.contains("Westmere-v1"),
        "{}",
        p.body
    );
    assert_eq!((on("w1").await, on("w2").await), (a.clone(), a.clone()));
    // A drain goes to its task's page, which reports each VM; both end on b.
    let p = alice
        .submit(
            "/admin/hosts",
            "/admin/hosts/do/drain",
            &[("name", &a), ("concurrency", "2")],
        )
        .await;
    assert!(p.path.starts_with("/admin/tasks/"), "{}", p.path);
    assert!(p.body.contains("Draining host"), "{}", p.body);
    let done = task_succeeds(&alice, &p.path).await;
    assert!(done.contains("w1: ") && done.contains("w2: "), "{done}");
    assert_eq!((on("w1").await, on("w2").await), (b.clone(), b.clone()));
    let err = alice
        .submit(
            "/admin/hosts",
            "/admin/hosts/do/drain",
            &[("name", &a), ("concurrency", "99")],
        )
        .await;
    assert!(err.body.contains("flash err"), "{}", err.body);
    // Undrained with the VMs' return: both come back.
    let p = alice
        .submit(
            "/admin/hosts",
            "/admin/hosts/do/undrain",
            &[("name", &a), ("return", "on")],
        )
        .await;
    task_succeeds(&alice, &p.path).await;
    assert_eq!((on("w1").await, on("w2").await), (a.clone(), a.clone()));
    // A running VM's page offers the live move with its options; a stopped one's, the
    // offline move, which goes through its task's page.
    let page = alice.get("/vms/w1").await.body;
    assert!(page.contains(r#"name="force_complete""#), "{page}");
    assert!(page.contains(r#"name="no_postcopy""#), "{page}");
    assert!(!page.contains("/do/move-offline"), "{page}");
    site.c
        .simple_action(admin, "w1", hostel_model::Op::Destroy)
        .await
        .unwrap();
    let page = alice.get("/vms/w1").await.body;
    assert!(page.contains("/do/move-offline"), "{page}");
    // Its CPU model is shown, and changes while it is stopped; a bad one is refused.
    assert!(page.contains("Westmere-v1 (machine pc-q35-10.0)"), "{page}");
    let p = alice
        .submit(
            "/vms/w1",
            "/vms/w1/do/cpu-model",
            &[("cpu_model", "Nehalem-v1")],
        )
        .await;
    assert!(p.body.contains("gets CPU model Nehalem-v1"), "{}", p.body);
    assert!(
        p.body.contains("Nehalem-v1 (machine pc-q35-10.0)"),
        "{}",
        p.body
    );
    let p = alice
        .submit(
            "/vms/w1",
            "/vms/w1/do/cpu-model",
            &[("cpu_model", "Skylake-Client-v4")],
        )
        .await;
    assert!(p.body.contains("does not run CPU model"), "{}", p.body);
    let p = alice
        .submit("/vms/w1", "/vms/w1/do/move-offline", &[("to", &b)])
        .await;
    assert!(p.body.contains("Migrating w1"), "{}", p.body);
    let done = task_succeeds(&alice, &p.path).await;
    assert!(done.contains("moved offline"), "{done}");
    assert!(!done.contains("Cancel the migration"), "{done}");
    assert_eq!(on("w1").await, b);
}
