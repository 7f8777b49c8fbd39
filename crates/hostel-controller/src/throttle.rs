//! What floods of unauthenticated and refused requests may cost: a bounded budget of
//! refusals per requester (token buckets) and in total, and a tally of the refusals that
//! went over it, written to the audit trail as one summary per requester per minute
//! instead of one row each.
//!
//! A requester is an address when the request has no valid token (a bad login, a wrong
//! or missing token), or a user when it has one. Only refusals spend the budget: a
//! logged-in user's allowed requests never touch it, so they are never slowed. When an
//! address's budget (or the total for all addresses) is spent, its requests without a
//! well-formed token are answered "too many requests" before any work (no database
//! lookup, no password hash); a user over budget is answered as usual, but their
//! refusals are tallied rather than recorded one by one.
//!
//! Memory is bounded too: at most `MAX_REQUESTERS` budgets and `MAX_TALLIED` tallies;
//! a full budget is the same as none, so those go first, then the longest unused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The budgets, all scaled from one number, `address_burst` (`hostel up
/// --refusal-budget`, default `DEFAULT_ADDRESS_BURST`): the refusals an address may have
/// in a burst; it then gets one back every 20 / `address_burst` s (default 10, then one
/// every 2 s). A logged-in user's refused changes (their audit rows, not their answers):
/// twice the burst, back twice as fast. All addresses together (what a flood from many
/// addresses may cost): ten times the burst, back ten times as fast (default 100, then 5
/// a second). One knob, because an API behind a proxy sees every user at the proxy's
/// address and needs them all raised together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budgets {
    address: (f64, f64),
    user: (f64, f64),
    total: (f64, f64),
}

pub const DEFAULT_ADDRESS_BURST: u32 = 10;

impl Budgets {
    pub fn scaled(address_burst: u32) -> Budgets {
        let burst = f64::from(address_burst.max(1));
        let per_second = burst / 20.0;
        Budgets {
            address: (burst, per_second),
            user: (2.0 * burst, 2.0 * per_second),
            total: (10.0 * burst, 10.0 * per_second),
        }
    }

    fn of(&self, who: Requester<'_>) -> (f64, f64) {
        match who {
            Requester::Address(_) => self.address,
            Requester::User(_) => self.user,
        }
    }
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets::scaled(DEFAULT_ADDRESS_BURST)
    }
}
/// Budgets kept at most (an address or a user each).
pub const MAX_REQUESTERS: usize = 10_000;
/// Requesters tallied separately in one summary period; the rest are summed together.
pub const MAX_TALLIED: usize = 100;

/// Who a refusal is charged to.
#[derive(Debug, Clone, Copy)]
pub enum Requester<'a> {
    /// A request without a valid token, from this address.
    Address(&'a str),
    /// A logged-in user (by name).
    User(&'a str),
}

impl Requester<'_> {
    fn key(&self) -> String {
        match self {
            Requester::Address(a) => format!("address {}", at_most_64(a)),
            Requester::User(u) => format!("user {}", at_most_64(u)),
        }
    }
}

/// A requester's name kept to a name's length (the map's memory is bounded by it).
fn at_most_64(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Whether a requester may be refused once more and still be answered (and recorded) as
/// usual.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Open,
    /// Over budget: try again in this many seconds.
    Spent {
        retry_after_secs: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, (burst, per_second): (f64, f64), now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.at = now;
    }

    /// Seconds until one token is back (none if there is one now).
    fn wait(&self, (_, per_second): (f64, f64)) -> Option<u64> {
        (self.tokens < 1.0).then(|| ((1.0 - self.tokens) / per_second).ceil().max(1.0) as u64)
    }

    fn spend(&mut self) {
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

/// Refusals that went over budget since the last summary.
#[derive(Debug, Default)]
struct Tally {
    by_requester: HashMap<String, u64>,
    /// Over budget, from requesters past `MAX_TALLIED` (not told apart: that would take
    /// memory per address).
    others: u64,
}

/// One line of a summary: `count` refusals from `requester` (`address 10.0.0.1` or
/// `user alice`), or (none) from the requesters past `MAX_TALLIED` together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TallyLine {
    pub requester: Option<String>,
    pub count: u64,
}

struct Inner {
    budgets: HashMap<String, Bucket>,
    total: Bucket,
    tally: Tally,
}

pub struct Throttle {
    rates: Budgets,
    inner: Mutex<Inner>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(Budgets::default())
    }
}

impl Throttle {
    pub fn new(rates: Budgets) -> Throttle {
        Throttle {
            rates,
            inner: Mutex::new(Inner {
                budgets: HashMap::new(),
                total: Bucket::full(rates.total.0, Instant::now()),
                tally: Tally::default(),
            }),
        }
    }

    /// May `who` be refused once more and answered as usual? Spends nothing.
    pub fn admission(&self, who: Requester<'_>) -> Admission {
        self.admission_at(who, Instant::now())
    }

    fn admission_at(&self, who: Requester<'_>, now: Instant) -> Admission {
        let mut inner = self.inner.lock().unwrap();
        let rates = self.rates.of(who);
        let own = inner.budgets.get_mut(&who.key()).and_then(|b| {
            b.refill(rates, now);
            b.wait(rates)
        });
        let total = match who {
            Requester::Address(_) => {
                inner.total.refill(self.rates.total, now);
                inner.total.wait(self.rates.total)
            }
            Requester::User(_) => None,
        };
        match own.max(total) {
            None => Admission::Open,
            Some(retry_after_secs) => Admission::Spent { retry_after_secs },
        }
    }

    /// Charges one refusal to `who` (and, for an address, to the total).
    pub fn charge(&self, who: Requester<'_>) {
        self.charge_at(who, Instant::now())
    }

    fn charge_at(&self, who: Requester<'_>, now: Instant) {
        let mut inner = self.inner.lock().unwrap();
        let rates = self.rates.of(who);
        let key = who.key();
        if !inner.budgets.contains_key(&key) {
            make_room(&mut inner.budgets, &self.rates, now);
            inner
                .budgets
                .insert(key.clone(), Bucket::full(rates.0, now));
        }
        if let Some(b) = inner.budgets.get_mut(&key) {
            b.refill(rates, now);
            b.spend();
        }
        if let Requester::Address(_) = who {
            inner.total.refill(self.rates.total, now);
            inner.total.spend();
        }
    }

    /// Refuses an address over its budget: the refusal is tallied (not recorded on its
    /// own) and the error says when to try again. Open addresses pass.
    pub fn gate(&self, address: &str) -> Result<(), crate::error::Error> {
        match self.admission(Requester::Address(address)) {
            Admission::Open => Ok(()),
            Admission::Spent { retry_after_secs } => {
                Err(self.over_budget(address, retry_after_secs))
            }
        }
    }

    /// The answer to a request from `address`, over its budget: tallied, and told to
    /// wait `retry_after_secs`.
    pub fn over_budget(&self, address: &str, retry_after_secs: u64) -> crate::error::Error {
        self.tally(Requester::Address(address));
        crate::error::Error::rate_limited(
            format!(
                "too many refused requests from {}: try again in {retry_after_secs} s \
                 (requests with a valid token are not limited)",
                at_most_64(address)
            ),
            retry_after_secs,
        )
    }

    /// Counts a refusal of `who` that is not recorded on its own (it went over budget).
    pub fn tally(&self, who: Requester<'_>) {
        let key = who.key();
        let tally = &mut self.inner.lock().unwrap().tally;
        if let Some(n) = tally.by_requester.get_mut(&key) {
            *n += 1;
        } else if tally.by_requester.len() < MAX_TALLIED {
            tally.by_requester.insert(key, 1);
        } else {
            tally.others += 1;
        }
    }

    /// The refusals tallied since the last call, one line per requester (the most
    /// first), and then one for the requesters past the cap; the tally starts again.
    pub fn take_tally(&self) -> Vec<TallyLine> {
        let tally = std::mem::take(&mut self.inner.lock().unwrap().tally);
        let mut lines: Vec<TallyLine> = tally
            .by_requester
            .into_iter()
            .map(|(requester, count)| TallyLine {
                requester: Some(requester),
                count,
            })
            .collect();
        lines.sort_by(|a, b| b.count.cmp(&a.count).then(a.requester.cmp(&b.requester)));
        if tally.others > 0 {
            lines.push(TallyLine {
                requester: None,
                count: tally.others,
            });
        }
        lines
    }

    #[cfg(test)]
    fn budgets_kept(&self) -> usize {
        self.inner.lock().unwrap().budgets.len()
    }
}

/// Frees one place in a full map of budgets: a budget back to full is the same as none,
/// so those go first; otherwise the one unused for longest.
fn make_room(budgets: &mut HashMap<String, Bucket>, all: &Budgets, now: Instant) {
    if budgets.len() < MAX_REQUESTERS {
        return;
    }
    budgets.retain(|key, b| {
        let rates = if key.starts_with("user ") {
            all.user
        } else {
            all.address
        };
        let mut b = *b;
        b.refill(rates, now);
        b.tokens < rates.0
    });
    if budgets.len() >= MAX_REQUESTERS {
        if let Some(oldest) = budgets
            .iter()
            .min_by_key(|(_, b)| b.at)
            .map(|(k, _)| k.clone())
        {
            budgets.remove(&oldest);
        }
    }
}

/// How often the tally is written to the audit trail.
pub const SUMMARY_PERIOD: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS_BURST: f64 = DEFAULT_ADDRESS_BURST as f64;
    const ADDRESS_PER_SECOND: f64 = 0.5;
    const TOTAL_BURST: f64 = 100.0;

    #[test]
    fn the_default_budgets_are_as_documented() {
        let b = Budgets::default();
        assert_eq!(b.address, (ADDRESS_BURST, ADDRESS_PER_SECOND));
        assert_eq!(b.user, (20.0, 1.0));
        assert_eq!(b.total, (TOTAL_BURST, 5.0));
    }

    #[test]
    fn an_address_is_refused_after_its_burst_and_comes_back_at_its_rate() {
        let t = Throttle::default();
        let now = Instant::now();
        let a = Requester::Address("10.0.0.1");
        for _ in 0..ADDRESS_BURST as usize {
            assert_eq!(t.admission_at(a, now), Admission::Open);
            t.charge_at(a, now);
        }
        let Admission::Spent { retry_after_secs } = t.admission_at(a, now) else {
            panic!("the burst is spent");
        };
        assert_eq!(retry_after_secs, (1.0 / ADDRESS_PER_SECOND) as u64);
        // Another address is not affected, and neither is a user.
        assert_eq!(
            t.admission_at(Requester::Address("10.0.0.2"), now),
            Admission::Open
        );
        assert_eq!(
            t.admission_at(Requester::User("alice"), now),
            Admission::Open
        );
        let later = now + Duration::from_secs_f64(1.0 / ADDRESS_PER_SECOND);
        assert_eq!(t.admission_at(a, later), Admission::Open);
    }

    #[test]
    fn all_addresses_together_are_refused_after_the_total_burst() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..TOTAL_BURST as usize {
            let addr = format!("10.1.{}.{}", i / 250, i % 250);
            assert_eq!(
                t.admission_at(Requester::Address(&addr), now),
                Admission::Open
            );
            t.charge_at(Requester::Address(&addr), now);
        }
        assert!(matches!(
            t.admission_at(Requester::Address("192.0.2.1"), now),
            Admission::Spent { .. }
        ));
        // Logged-in users are not charged to the total.
        assert_eq!(
            t.admission_at(Requester::User("alice"), now),
            Admission::Open
        );
    }

    #[test]
    fn the_budgets_kept_are_bounded() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..MAX_REQUESTERS + 500 {
            let addr = format!("2001:db8::{i:x}");
            t.charge_at(Requester::Address(&addr), now);
        }
        assert_eq!(t.budgets_kept(), MAX_REQUESTERS);
        // Budgets back to full are dropped first, when room is needed.
        let later = now + Duration::from_secs(60);
        t.charge_at(Requester::Address("192.0.2.7"), later);
        assert_eq!(t.budgets_kept(), 1);
    }

    #[test]
    fn the_tally_is_one_line_per_requester_and_bounded() {
        let t = Throttle::default();
        for _ in 0..1000 {
            t.tally(Requester::Address("10.0.0.1"));
        }
        t.tally(Requester::User("mallory"));
        for i in 0..MAX_TALLIED + 50 {
            t.tally(Requester::Address(&format!("10.2.0.{i}")));
        }
        let lines = t.take_tally();
        assert_eq!(lines.len(), MAX_TALLIED + 1);
        assert_eq!(lines[0].requester.as_deref(), Some("address 10.0.0.1"));
        assert_eq!(lines[0].count, 1000);
        let rest = lines.last().unwrap();
        assert_eq!(rest.requester, None);
        let all: u64 = lines.iter().map(|l| l.count).sum();
        assert_eq!(all, 1000 + 1 + MAX_TALLIED as u64 + 50);
        assert!(t.take_tally().is_empty(), "the tally starts again");
    }
}
