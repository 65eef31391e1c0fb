//! A small Flight SQL surface, enough for SQL clients of Flight (ADBC's Flight
//! SQL driver, JDBC/ODBC over Flight SQL) to read tables: `SELECT * FROM name`
//! and `SELECT a, b FROM name` (a column projection), nothing else. No
//! filters, joins or aggregates: a client that wants them reads the table and
//! runs them itself (DuckDB and pandas do it over Arrow without copying).
//!
//! ```text
//!  CreatePreparedStatement {query}  -> handle = the query's JSON ticket, dataset schema
//!  get_flight_info(CommandPreparedStatementQuery {handle}
//!                  | CommandStatementQuery {query})     -> one endpoint, our own ticket
//!  do_get(ticket)                    -> the version, as any do_get serves it
//!  ClosePreparedStatement            -> nothing to free: handles hold no state
//! ```
//! The handle is the ticket itself (`{"name", "columns"}`), so the server
//! keeps no per-statement state and a client that never closes leaks nothing.

use arrow_flight::sql::{
    ActionCreatePreparedStatementRequest, Any, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt,
};
use prost::Message;

use super::ticket::Wanted;

/// The action that prepares a statement.
pub const CREATE_PREPARED: &str = "CreatePreparedStatement";
/// The action that closes one.
pub const CLOSE_PREPARED: &str = "ClosePreparedStatement";

/// The table a Flight SQL command in a descriptor's `cmd` names: `None` when
/// `cmd` is not a Flight SQL command (our own JSON descriptors).
pub fn command(cmd: &[u8]) -> Option<Result<Wanted, String>> {
    let any = Any::decode(cmd).ok()?;
    if any.is::<CommandStatementQuery>() {
        let q = any.unpack::<CommandStatementQuery>().ok()??;
        return Some(parse_select(&q.query));
    }
    if any.is::<CommandPreparedStatementQuery>() {
        let q = any.unpack::<CommandPreparedStatementQuery>().ok()??;
        return Some(
            serde_json::from_slice(&q.prepared_statement_handle)
                .map_err(|e| format!("not a prepared statement of this server: {e}")),
        );
    }
    if any.type_url.contains("arrow.flight.protocol.sql") {
        let what = any.type_url.rsplit('.').next().unwrap_or("");
        return Some(Err(format!(
            "Flight SQL {what} is not supported: this server answers SELECT * FROM name and \
             SELECT column, ... FROM name"
        )));
    }
    None
}

/// The query of a `CreatePreparedStatement` action body, parsed.
pub fn prepared(body: &[u8]) -> Result<Wanted, String> {
    let any = Any::decode(body).map_err(|e| format!("{CREATE_PREPARED}: {e}"))?;
    let req = any
        .unpack::<ActionCreatePreparedStatementRequest>()
        .map_err(|e| format!("{CREATE_PREPARED}: {e}"))?
        .ok_or_else(|| format!("{CREATE_PREPARED}: the body is not its request"))?;
    parse_select(&req.query)
}

/// The handle of a prepared statement: its ticket.
pub fn handle(w: &Wanted) -> Vec<u8> {
    serde_json::to_vec(w).unwrap_or_default()
}

/// `Any`-wrapped bytes of a Flight SQL message (action results).
pub fn packed<M: ProstMessageExt>(m: &M) -> Vec<u8> {
    m.as_any().encode_to_vec()
}

/// `SELECT * FROM t` or `SELECT a, "b c" FROM t` (keywords in any case,
/// identifiers bare or in double quotes, an optional `;`).
pub fn parse_select(sql: &str) -> Result<Wanted, String> {
    let unsupported = || {
        format!(
            "unsupported SQL {:?}: this server answers SELECT * FROM name and SELECT column, ... FROM name",
            sql.chars().take(200).collect::<String>()
        )
    };
    let tokens = tokens(sql).ok_or_else(unsupported)?;
    let mut t = tokens.iter().map(|(s, quoted)| (s.as_str(), *quoted));
    let keyword = |tok: Option<(&str, bool)>, kw: &str| {
        tok.is_some_and(|(s, q)| !q && s.eq_ignore_ascii_case(kw))
    };
    if !keyword(t.next(), "select") {
        return Err(unsupported());
    }
    let mut columns = Vec::new();
    let mut star = false;
    loop {
        match t.next() {
            Some(("*", false)) if columns.is_empty() && !star => star = true,
            Some((name, quoted)) if !star && (quoted || is_identifier(name)) => {
                columns.push(name.to_string())
            }
            _ => return Err(unsupported()),
        }
        match t.next() {
            Some((",", false)) if !star => continue,
            tok if keyword(tok, "from") => break,
            _ => return Err(unsupported()),
        }
    }
    let name = match t.next() {
        Some((name, quoted)) if quoted || is_identifier(name) => name.to_string(),
        _ => return Err(unsupported()),
    };
    if t.next().is_some() {
        return Err(unsupported());
    }
    Ok(Wanted {
        name,
        version: None,
        columns: (!star).then_some(columns),
    })
}

fn is_identifier(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
        && !s.is_empty()
        && !s.eq_ignore_ascii_case("from")
        && !s.eq_ignore_ascii_case("select")
}

/// Words, `"quoted identifiers"` (`""` inside is a quote), `*` and `,`;
/// a trailing `;` dropped. `None` on anything else.
fn tokens(sql: &str) -> Option<Vec<(String, bool)>> {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '*' || c == ',' {
            chars.next();
            out.push((c.to_string(), false));
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        s.push('"');
                    }
                    '"' => break,
                    ch => s.push(ch),
                }
            }
            out.push((s, true));
        } else {
            let mut s = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || matches!(ch, '*' | ',' | '"') {
                    break;
                }
                s.push(ch);
                chars.next();
            }
            out.push((s, false));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, columns: Option<&[&str]>) -> Wanted {
        Wanted {
            name: name.into(),
            version: None,
            columns: columns.map(|c| c.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn selects_parse() {
        assert_eq!(
            parse_select("SELECT * FROM sales").unwrap(),
            w("sales", None)
        );
        assert_eq!(
            parse_select("select * from sales;").unwrap(),
            w("sales", None)
        );
        assert_eq!(
            parse_select("SELECT a, \"b c\" FROM \"my table\"").unwrap(),
            w("my table", Some(&["a", "b c"]))
        );
        assert_eq!(
            parse_select("  Select  x,y  From  t  ").unwrap(),
            w("t", Some(&["x", "y"]))
        );
        assert_eq!(
            parse_select("SELECT \"a\"\"b\" FROM t").unwrap(),
            w("t", Some(&["a\"b"]))
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for sql in [
            "",
            "SELECT",
            "SELECT * FROM",
            "SELECT FROM t",
            "SELECT *, a FROM t",
            "SELECT a b FROM t",
            "SELECT * FROM t WHERE a = 1",
            "SELECT count(*) FROM t",
            "DELETE FROM t",
            "SELECT a FROM t; DROP TABLE t",
            "SELECT \"a FROM t",
            "SELECT a,, b FROM t",
        ] {
            assert!(parse_select(sql).is_err(), "{sql:?}");
        }
    }

    #[test]
    fn commands_are_recognised_and_handles_round_trip() {
        let q = CommandStatementQuery {
            query: "SELECT a FROM t".into(),
            transaction_id: None,
        };
        assert_eq!(command(&packed(&q)).unwrap().unwrap(), w("t", Some(&["a"])));
        let h = CommandPreparedStatementQuery {
            prepared_statement_handle: handle(&w("t", None)).into(),
        };
        assert_eq!(command(&packed(&h)).unwrap().unwrap(), w("t", None));
        assert!(command(br#"{"name": "t"}"#).is_none());
        let other = arrow_flight::sql::CommandGetTables::default();
        assert!(command(&packed(&other)).unwrap().is_err());
    }
}
