//! The one way the CLI prints what it got: JSON, YAML, or text, chosen by `-o`; tables
//! are rows and columns given here, never built by a command.

use anyhow::Result;
use clap::ValueEnum;
use comfy_table::{presets::NOTHING, Table};
use serde::Serialize;

/// `-o` of the commands that show a table or a few lines.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Format {
    Table,
    Json,
}

/// `-o` of `describe`: one whole object.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum DescribeFormat {
    Yaml,
    Json,
}

/// A table column: its header and how a row gives its cell.
pub type Column<T> = (&'static str, fn(&T) -> String);

/// Pretty JSON and a newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// JSON, or the text `text` prints for `value`.
pub fn show<T: Serialize + ?Sized>(format: Format, value: &T, text: impl FnOnce(&T)) -> Result<()> {
    match format {
        Format::Json => json(value),
        Format::Table => {
            text(value);
            Ok(())
        }
    }
}

/// JSON, or a table of `rows` with these columns.
pub fn list<T: Serialize>(format: Format, rows: &[T], columns: &[Column<T>]) -> Result<()> {
    show(format, rows, |rows| print_table(rows, columns))
}

/// YAML or JSON of one object.
pub fn describe<T: Serialize>(format: DescribeFormat, value: &T) -> Result<()> {
    match format {
        DescribeFormat::Json => json(value),
        DescribeFormat::Yaml => {
            print!("{}", serde_yaml::to_string(value)?);
            Ok(())
        }
    }
}

/// A table of `rows` with these columns, headers first.
pub fn print_table<T>(rows: &[T], columns: &[Column<T>]) {
    print_grid(
        columns.iter().map(|(h, _)| *h),
        rows.iter()
            .map(|r| columns.iter().map(|(_, cell)| cell(r)).collect()),
    );
}

/// A table of cells already made (for a table whose rows are not a list's items).
pub fn print_grid<'a>(
    header: impl IntoIterator<Item = &'a str>,
    rows: impl IntoIterator<Item = Vec<String>>,
) {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header);
    for r in rows {
        t.add_row(r);
    }
    println!("{t}");
}

/// Bytes as a size in MiB or GiB, `?` when unknown.
pub fn opt_mib(b: Option<u64>) -> String {
    b.map(|b| hostel_model::format_mib(b >> 20))
        .unwrap_or_else(|| "?".into())
}

/// A byte count in binary units with one decimal (`512 B`, `1.5 MiB`, `2.0 GiB`).
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024.0 {
        return format!("{n:.0} B");
    }
    let mut v = n / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_in_binary_units() {
        assert_eq!(super::bytes(0.0), "0 B");
        assert_eq!(super::bytes(1023.0), "1023 B");
        assert_eq!(super::bytes(1536.0), "1.5 KiB");
        assert_eq!(super::bytes((3u64 << 30) as f64), "3.0 GiB");
    }
}
