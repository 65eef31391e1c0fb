//! What Flight requests name: tickets (`do_get`), descriptors
//! (`get_flight_info`, `get_schema`, `do_put`) and action bodies.
//!
//! A ticket or a command descriptor is either a table name as plain UTF-8, or
//! a JSON object:
//! ```text
//! {"name": "sales", "version": 7, "columns": ["region", "amount"]}   ticket / get_flight_info
//! {"name": "sales", "if_version": 7}                                  do_put
//! ```
//! A path descriptor is `[name]`. The tickets this server hands out (in
//! `FlightInfo` endpoints) are the JSON form with the version number filled
//! in, so a `do_get` of an endpoint reads exactly the version described.

use serde::{Deserialize, Serialize};

use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::FlightDescriptor;

/// Which table, which version, which columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wanted {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
}

/// Where a `do_put` goes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutTarget {
    pub name: String,
    /// Publish only if the name is still at this version.
    #[serde(default)]
    pub if_version: Option<u64>,
}

/// An `ingest` action: a Parquet file or directory the server reads.
/// (`Debug` leaves the option values out: they can be secrets.)
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestAction {
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub columns: Vec<String>,
    /// Object store settings for this ingest (as the socket's `ingest`).
    #[serde(default)]
    pub storage_options: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for IngestAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestAction")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("columns", &self.columns)
            .field(
                "storage_options (values hidden)",
                &self.storage_options.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn text(bytes: &[u8], what: &str) -> Result<String, String> {
    let s = std::str::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8"))?;
    if s.is_empty() {
        return Err(format!("{what} is empty: give a table name"));
    }
    Ok(s.to_owned())
}

fn json_or_name<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    what: &str,
    from_name: impl FnOnce(String) -> T,
) -> Result<T, String> {
    if bytes.first() == Some(&b'{') {
        return serde_json::from_slice(bytes).map_err(|e| format!("{what}: {e}"));
    }
    Ok(from_name(text(bytes, what)?))
}

fn name_only(name: String) -> Wanted {
    Wanted {
        name,
        version: None,
        columns: None,
    }
}

/// A `do_get` ticket.
pub fn parse_ticket(bytes: &[u8]) -> Result<Wanted, String> {
    json_or_name(bytes, "ticket", name_only)
}

/// The table a descriptor names (`get_flight_info`, `get_schema`).
pub fn parse_descriptor(d: &FlightDescriptor) -> Result<Wanted, String> {
    match d.r#type() {
        DescriptorType::Path => Ok(name_only(path_name(d)?)),
        DescriptorType::Cmd => json_or_name(&d.cmd, "descriptor command", name_only),
        DescriptorType::Unknown => Err("descriptor of unknown type: use a path [name]".into()),
    }
}

/// The target of a `do_put`, from the descriptor of its first message.
pub fn parse_put(d: &FlightDescriptor) -> Result<PutTarget, String> {
    match d.r#type() {
        DescriptorType::Path => Ok(PutTarget {
            name: path_name(d)?,
            if_version: None,
        }),
        DescriptorType::Cmd => json_or_name(&d.cmd, "descriptor command", |name| PutTarget {
            name,
            if_version: None,
        }),
        DescriptorType::Unknown => Err("descriptor of unknown type: use a path [name]".into()),
    }
}

fn path_name(d: &FlightDescriptor) -> Result<String, String> {
    match d.path.as_slice() {
        [name] if !name.is_empty() => Ok(name.clone()),
        p => Err(format!(
            "a path descriptor names one table: [name], not {} element(s)",
            p.len()
        )),
    }
}

/// The ticket of an endpoint: exactly this version.
pub fn ticket_for(name: &str, version: u64, columns: Option<&[String]>) -> Vec<u8> {
    serde_json::to_vec(&Wanted {
        name: name.to_owned(),
        version: Some(version),
        columns: columns.map(|c| c.to_vec()),
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_names_or_json() {
        assert_eq!(parse_ticket(b"sales").unwrap(), name_only("sales".into()));
        let w = parse_ticket(br#"{"name":"s","version":3,"columns":["a"]}"#).unwrap();
        assert_eq!(w.version, Some(3));
        assert_eq!(w.columns.as_deref(), Some(&["a".to_string()][..]));
        assert!(parse_ticket(b"").unwrap_err().contains("empty"));
        assert!(parse_ticket(b"\xff").unwrap_err().contains("UTF-8"));
        assert!(parse_ticket(br#"{"name":"s","colums":[]}"#)
            .unwrap_err()
            .contains("unknown field"));
        let t = ticket_for("s", 9, None);
        assert_eq!(parse_ticket(&t).unwrap().version, Some(9));
    }

    #[test]
    fn descriptors() {
        let p = FlightDescriptor::new_path(vec!["t".into()]);
        assert_eq!(parse_descriptor(&p).unwrap().name, "t");
        assert_eq!(parse_put(&p).unwrap().if_version, None);
        let two = FlightDescriptor::new_path(vec!["a".into(), "b".into()]);
        assert!(parse_descriptor(&two).is_err());
        let c = FlightDescriptor::new_cmd(r#"{"name":"t","if_version":4}"#);
        assert_eq!(parse_put(&c).unwrap().if_version, Some(4));
    }
}
