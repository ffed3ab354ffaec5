//! docs/configuration.md's reference tables list exactly the settings the services read: every
//! key of each `Config::default()` appears as `<PREFIX>__<KEY>` in its service's table and every
//! row is such a key, with the default the code has. On a mismatch the test prints the rows to
//! add, so the table is easy to keep up.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// One row of a reference table.
#[derive(Debug)]
struct Row {
    default: String,
    meaning: String,
}

/// The reference tables: prefix -> variable -> row, from the `## Reference` section.
fn reference_tables() -> BTreeMap<String, BTreeMap<String, Row>> {
    let text =
        std::fs::read_to_string(crate::common::repo_root().join("docs/configuration.md")).unwrap();
    let section = text
        .split("\n## Reference")
        .nth(1)
        .expect("docs/configuration.md has a `## Reference` section");
    let section = section.split("\n## ").next().unwrap();
    let mut tables: BTreeMap<String, BTreeMap<String, Row>> = BTreeMap::new();
    for line in section.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        if cells.len() < 3 {
            continue;
        }
        let name = cells[0].trim();
        let Some(name) = name.strip_prefix('`').and_then(|n| n.strip_suffix('`')) else {
            continue;
        };
        let Some((prefix, _)) = name.split_once("__") else {
            continue;
        };
        let previous = tables.entry(prefix.to_owned()).or_default().insert(
            name.to_owned(),
            Row {
                default: cells[1].trim().to_owned(),
                meaning: cells[2..].join("|").trim().to_owned(),
            },
        );
        assert!(previous.is_none(), "{name} is listed twice");
    }
    tables
}

/// How a default is written in the table: the value in backticks, `none` or `empty`.
fn default_matches(value: &Value, cell: &str) -> bool {
    let ticked: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
    match value {
        Value::Null => cell.contains("none"),
        Value::String(s) if s.is_empty() => cell.contains("empty"),
        Value::String(s) => ticked.contains(&s.as_str()),
        Value::Bool(b) => ticked.contains(&b.to_string().as_str()),
        Value::Number(n) => {
            let n = n.as_f64().unwrap();
            ticked
                .iter()
                .any(|t| t.parse::<f64>().is_ok_and(|t| (t - n).abs() < 1e-9))
        }
        Value::Array(items) if items.is_empty() => cell.contains("empty"),
        Value::Array(items) => items
            .iter()
            .all(|item| item.as_str().is_some_and(|s| ticked.contains(&s))),
        Value::Object(_) => false,
    }
}

fn suggestion(name: &str, value: &Value) -> String {
    let default = match value {
        Value::Null => "none".to_owned(),
        Value::String(s) if s.is_empty() => "empty".to_owned(),
        Value::String(s) => format!("`{s}`"),
        Value::Array(a) if a.is_empty() => "empty".to_owned(),
        Value::Array(a) => a
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", "),
        other => format!("`{other}`"),
    };
    format!("| `{name}` | {default} | ... |")
}

#[test]
fn the_reference_lists_every_setting_with_its_default_and_nothing_else() {
    let tables = reference_tables();
    let mut problems = Vec::new();
    for (prefix, defaults) in crate::common::services() {
        let table = tables.get(prefix);
        let expected: BTreeSet<String> = defaults
            .keys()
            .map(|k| format!("{prefix}__{}", k.to_ascii_uppercase()))
            .collect();
        let listed: BTreeSet<String> = table
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        for missing in expected.difference(&listed) {
            let key = missing[prefix.len() + 2..].to_ascii_lowercase();
            problems.push(format!(
                "missing row: {}",
                suggestion(missing, &defaults[&key])
            ));
        }
        for extra in listed.difference(&expected) {
            problems.push(format!(
                "{extra} is listed but {prefix}'s Config has no such key"
            ));
        }
        for (key, value) in &defaults {
            let name = format!("{prefix}__{}", key.to_ascii_uppercase());
            let Some(row) = table.and_then(|t| t.get(&name)) else {
                continue;
            };
            if row.meaning.is_empty() || row.meaning == "..." {
                problems.push(format!("{name} has no meaning"));
            }
            // Secrets serialise redacted and versions are the build's: their cells are prose.
            let prose = value == "[redacted]" || key == "version";
            if !prose && !default_matches(value, &row.default) {
                problems.push(format!(
                    "{name}: the default is {value}, the table says {:?} (e.g. {})",
                    row.default,
                    suggestion(&name, value)
                ));
            }
        }
    }
    let unknown: Vec<&String> = tables
        .keys()
        .filter(|p| !crate::common::services().contains_key(p.as_str()))
        .collect();
    if !unknown.is_empty() {
        problems.push(format!("tables for unknown prefixes {unknown:?}"));
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md:\n{}",
        problems.join("\n")
    );
}
