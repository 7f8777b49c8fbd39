//! The one way rows become records and records become rows.
//!
//! - [`Value`]: what a query binds; every bound value goes through one `From` impl.
//! - [`Cols`]: reads a row's columns by name; enum and time columns are decoded in one
//!   place each ([`Cols::enumed`], [`Cols::time`]), with errors naming the table, the
//!   column and the bad value.
//! - [`FromRow`]/[`Record`]: implemented once per record type; the generic
//!   [`Store::fetch_all`] and friends run a query and map its rows.

use crate::{placeholders, Store, Timestamp};
use anyhow::{anyhow, Context, Result};
use hostel_model::net::NetMode;
use hostel_model::{Accel, ImageKind, Policy, PoolDriver, TaskState, VmState};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AnyConnection, Row};
use std::borrow::Cow;

/// A value bound to a `$N` placeholder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Text(Option<Cow<'a, str>>),
    Int(Option<i64>),
    Real(f64),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Value::Text(Some(Cow::Borrowed(s)))
    }
}
impl<'a> From<&'a String> for Value<'a> {
    fn from(s: &'a String) -> Self {
        Value::Text(Some(Cow::Borrowed(s)))
    }
}
impl From<String> for Value<'_> {
    fn from(s: String) -> Self {
        Value::Text(Some(Cow::Owned(s)))
    }
}
impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(s: Option<&'a str>) -> Self {
        Value::Text(s.map(Cow::Borrowed))
    }
}
impl<'a> From<&'a Option<String>> for Value<'a> {
    fn from(s: &'a Option<String>) -> Self {
        Value::Text(s.as_deref().map(Cow::Borrowed))
    }
}
impl From<u64> for Value<'_> {
    fn from(n: u64) -> Self {
        Value::Int(Some(n as i64))
    }
}
impl From<u32> for Value<'_> {
    fn from(n: u32) -> Self {
        Value::Int(Some(n.into()))
    }
}
impl From<u16> for Value<'_> {
    fn from(n: u16) -> Self {
        Value::Int(Some(n.into()))
    }
}
impl From<Option<u32>> for Value<'_> {
    fn from(n: Option<u32>) -> Self {
        Value::Int(n.map(i64::from))
    }
}
impl From<bool> for Value<'_> {
    fn from(b: bool) -> Self {
        Value::Int(Some(b as i64))
    }
}
impl From<f64> for Value<'_> {
    fn from(x: f64) -> Self {
        Value::Real(x)
    }
}
/// Times are kept as RFC 3339 UTC text, as they always were.
impl From<Timestamp> for Value<'_> {
    fn from(t: Timestamp) -> Self {
        Value::Text(Some(Cow::Owned(t.to_string())))
    }
}
impl From<Option<Timestamp>> for Value<'_> {
    fn from(t: Option<Timestamp>) -> Self {
        Value::Text(t.map(|t| Cow::Owned(t.to_string())))
    }
}

/// `[Value::from(a), Value::from(b), ...]`: the binds of a query, in placeholder order.
macro_rules! binds {
    ($($v:expr),* $(,)?) => {
        vec![$($crate::row::Value::from($v)),*]
    };
}
pub(crate) use binds;

/// A query with its values bound.
pub(crate) fn query<'q>(
    sql: &'q str,
    binds: Vec<Value<'q>>,
) -> sqlx::query::Query<'q, Any, AnyArguments<'q>> {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = match b {
            Value::Text(Some(Cow::Borrowed(s))) => q.bind(s),
            Value::Text(Some(Cow::Owned(s))) => q.bind(s),
            Value::Text(None) => q.bind(None::<String>),
            Value::Int(n) => q.bind(n),
            Value::Real(x) => q.bind(x),
        };
    }
    q
}

/// An enum kept in a TEXT column under its `as_str()` name.
pub(crate) trait TextEnum: Copy + 'static {
    /// What a value is, for errors ("VM state").
    const WHAT: &'static str;
    const ALL: &'static [Self];
    fn text(self) -> &'static str;
}

macro_rules! text_enum {
    ($t:ty, $what:expr, $all:expr) => {
        impl TextEnum for $t {
            const WHAT: &'static str = $what;
            const ALL: &'static [Self] = &$all;
            fn text(self) -> &'static str {
                self.as_str()
            }
        }
        impl From<$t> for Value<'_> {
            fn from(e: $t) -> Self {
                Value::Text(Some(Cow::Borrowed(e.text())))
            }
        }
    };
}

text_enum!(VmState, "VM state", VmState::ALL);
text_enum!(Policy, "policy", [Policy::Destroy, Policy::Restart]);
text_enum!(
    ImageKind,
    "image kind",
    [ImageKind::DirectKernel, ImageKind::Disk]
);
text_enum!(
    PoolDriver,
    "pool driver",
    [PoolDriver::Dir, PoolDriver::Btrfs]
);
text_enum!(NetMode, "network mode", [NetMode::Nat, NetMode::Bridged]);
text_enum!(
    TaskState,
    "task state",
    [TaskState::Running, TaskState::Succeeded, TaskState::Failed]
);
text_enum!(Accel, "accelerator", [Accel::Kvm, Accel::Tcg]);

/// The enum value named `s`, if any.
pub(crate) fn parse_enum<E: TextEnum>(s: &str) -> Option<E> {
    E::ALL.iter().copied().find(|e| e.text() == s)
}

/// A row being read, and the table it is from (named in errors).
pub(crate) struct Cols<'r> {
    row: &'r AnyRow,
    table: &'static str,
}

impl<'r> Cols<'r> {
    pub(crate) fn new(row: &'r AnyRow, table: &'static str) -> Self {
        Cols { row, table }
    }

    fn get<T>(&self, col: &str) -> Result<T>
    where
        T: for<'a> sqlx::Decode<'a, Any> + sqlx::Type<Any>,
    {
        self.row
            .try_get::<T, _>(col)
            .with_context(|| format!("reading {}.{col}", self.table))
    }

    pub(crate) fn text(&self, col: &str) -> Result<String> {
        self.get(col)
    }

    pub(crate) fn opt_text(&self, col: &str) -> Result<Option<String>> {
        self.get(col)
    }

    pub(crate) fn int<T: TryFrom<i64>>(&self, col: &str) -> Result<T> {
        let n: i64 = self.get(col)?;
        T::try_from(n).map_err(|_| anyhow!("{}.{col}: {n} is out of range", self.table))
    }

    pub(crate) fn opt_int<T: TryFrom<i64>>(&self, col: &str) -> Result<Option<T>> {
        match self.get::<Option<i64>>(col)? {
            None => Ok(None),
            Some(_) => self.int(col).map(Some),
        }
    }

    /// A flag kept as 0 or 1.
    pub(crate) fn flag(&self, col: &str) -> Result<bool> {
        Ok(self.get::<i64>(col)? != 0)
    }

    pub(crate) fn real(&self, col: &str) -> Result<f64> {
        self.get(col)
    }

    /// An enum kept as its name: the one place such columns are parsed.
    pub(crate) fn enumed<E: TextEnum>(&self, col: &str) -> Result<E> {
        let s = self.text(col)?;
        parse_enum(&s).ok_or_else(|| {
            let names: Vec<&str> = E::ALL.iter().map(|e| e.text()).collect();
            anyhow!(
                "{}.{col}: {s:?} is not a {} (one of {})",
                self.table,
                E::WHAT,
                names.join(", ")
            )
        })
    }

    /// A time kept as RFC 3339 text: the one place such columns are parsed.
    pub(crate) fn time(&self, col: &str) -> Result<Timestamp> {
        let s = self.text(col)?;
        self.parse_time(col, &s)
    }

    pub(crate) fn opt_time(&self, col: &str) -> Result<Option<Timestamp>> {
        self.opt_text(col)?
            .map(|s| self.parse_time(col, &s))
            .transpose()
    }

    fn parse_time(&self, col: &str, s: &str) -> Result<Timestamp> {
        Timestamp::parse(s)
            .map_err(|e| anyhow!("{}.{col}: {s:?} is not an RFC 3339 time: {e}", self.table))
    }
}

/// Something a row decodes into.
pub(crate) trait FromRow: Sized {
    /// The table the row is from (named in errors; a `Record` is inserted into it).
    const TABLE: &'static str;
    fn from_row(c: &Cols<'_>) -> Result<Self>;
}

/// A row of table `TABLE`: its columns, in the order `values` gives them.
pub(crate) trait Record: FromRow {
    const COLS: &'static str;
    fn values(&self) -> Vec<Value<'_>>;
}

/// The first column of a one-column query (names, ids).
impl FromRow for String {
    const TABLE: &'static str = "query";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(c.row.try_get::<String, _>(0)?)
    }
}

/// The first two columns of a query, as text.
impl FromRow for (String, String) {
    const TABLE: &'static str = "query";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok((c.row.try_get(0)?, c.row.try_get(1)?))
    }
}

/// A count or a sum (`CAST(... AS BIGINT)`), in the first column.
pub(crate) struct Count(pub u64);

impl FromRow for Count {
    const TABLE: &'static str = "query";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(Count(c.row.try_get::<i64, _>(0)?.max(0) as u64))
    }
}

fn decode<T: FromRow>(rows: &[AnyRow]) -> Result<Vec<T>> {
    rows.iter()
        .map(|r| T::from_row(&Cols::new(r, T::TABLE)))
        .collect()
}

/// The `INSERT` of a record into its table.
pub(crate) fn insert_sql<T: Record>() -> String {
    let n = T::COLS.split(',').count();
    format!(
        "INSERT INTO {} ({}) VALUES ({})",
        T::TABLE,
        T::COLS,
        placeholders(1, n)
    )
}

// Queries on one connection (a transaction's, say); the `Store` methods below run them
// on a pooled one.

pub(crate) async fn fetch_all_on<T: FromRow>(
    conn: &mut AnyConnection,
    sql: &str,
    binds: Vec<Value<'_>>,
) -> Result<Vec<T>> {
    let rows = query(sql, binds).fetch_all(&mut *conn).await?;
    decode(&rows)
}

/// Runs a statement; gives how many rows it changed.
pub(crate) async fn execute_on(
    conn: &mut AnyConnection,
    sql: &str,
    binds: Vec<Value<'_>>,
) -> Result<u64> {
    Ok(query(sql, binds).execute(&mut *conn).await?.rows_affected())
}

pub(crate) async fn insert_on<T: Record>(conn: &mut AnyConnection, r: &T) -> Result<()> {
    execute_on(conn, &insert_sql::<T>(), r.values()).await?;
    Ok(())
}

impl Store {
    /// The VM a row of one of its parts (`nics`, `port_forwards`, `disks`, `snapshots`)
    /// belongs to.
    pub(crate) async fn vm_of(&self, table: &'static str, id: &str) -> Result<Option<String>> {
        let row: Option<(String, String)> = self
            .fetch_optional(
                &format!("SELECT vm_id, id FROM {table} WHERE id = $1"),
                binds![id],
            )
            .await?;
        Ok(row.map(|(vm, _)| vm))
    }

    pub(crate) async fn fetch_all<T: FromRow>(
        &self,
        sql: &str,
        binds: Vec<Value<'_>>,
    ) -> Result<Vec<T>> {
        fetch_all_on(&mut *self.pool().acquire().await?, sql, binds).await
    }

    pub(crate) async fn fetch_optional<T: FromRow>(
        &self,
        sql: &str,
        binds: Vec<Value<'_>>,
    ) -> Result<Option<T>> {
        let row = query(sql, binds).fetch_optional(self.pool()).await?;
        row.map(|r| T::from_row(&Cols::new(&r, T::TABLE)))
            .transpose()
    }

    pub(crate) async fn fetch_one<T: FromRow>(
        &self,
        sql: &str,
        binds: Vec<Value<'_>>,
    ) -> Result<T> {
        let row = query(sql, binds).fetch_one(self.pool()).await?;
        T::from_row(&Cols::new(&row, T::TABLE))
    }

    /// Runs a statement; gives how many rows it changed.
    pub(crate) async fn execute(&self, sql: &str, binds: Vec<Value<'_>>) -> Result<u64> {
        execute_on(&mut *self.pool().acquire().await?, sql, binds).await
    }

    /// Sets the one `value` of a key-value table's row `key` (`DELETE` then `INSERT`, in
    /// one transaction), or removes the row (none). `table` and its columns are this
    /// crate's own names, never input.
    pub(crate) async fn replace_value(
        &self,
        table: &str,
        (key_col, key): (&str, &str),
        value_col: &str,
        value: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let delete = format!("DELETE FROM {table} WHERE {key_col} = $1");
        execute_on(&mut tx, &delete, binds![key]).await?;
        if let Some(v) = value {
            let insert = format!("INSERT INTO {table} ({key_col}, {value_col}) VALUES ($1, $2)");
            execute_on(&mut tx, &insert, binds![key, v]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn insert<T: Record>(&self, r: &T) -> Result<()> {
        self.execute(&insert_sql::<T>(), r.values()).await?;
        Ok(())
    }

    /// Deletes row `id` of `table` in one transaction unless `users_sql` (with `$1` = id)
    /// names VMs that use it; returns those names. The row is write-locked first, so
    /// nothing can start using it meanwhile (a VM insert naming it waits, then finds it
    /// gone). `also` (with `$1` = id) runs just before the row's own `DELETE`: the rows
    /// that belong to it.
    pub(crate) async fn delete_if_unused(
        &self,
        table: &str,
        users_sql: &str,
        also: &[&str],
        id: &str,
    ) -> Result<Vec<String>> {
        let mut tx = self.pool().begin().await?;
        // The one statement that differs by engine. SQLite: any write takes the
        // database's write lock. PostgreSQL: a no-op UPDATE takes only FOR NO KEY UPDATE,
        // which lets the FOR KEY SHARE of a foreign-key check (a VM insert naming the
        // row) through; FOR UPDATE is the lock those checks wait for.
        let lock = if self.is_sqlite() {
            format!("UPDATE {table} SET name = name WHERE id = $1")
        } else {
            format!("SELECT id FROM {table} WHERE id = $1 FOR UPDATE")
        };
        execute_on(&mut tx, &lock, binds![id]).await?;
        let users: Vec<String> = fetch_all_on(&mut tx, users_sql, binds![id]).await?;
        if users.is_empty() {
            let delete = format!("DELETE FROM {table} WHERE id = $1");
            for sql in also.iter().copied().chain([delete.as_str()]) {
                execute_on(&mut tx, sql, binds![id]).await?;
            }
        }
        tx.commit().await?;
        Ok(users)
    }
}
