//! Reads the examples and tables out of docs/PROTOCOL.md, so the golden test
//! can hold the document to the fixture.

use serde_json::Value;

/// A fenced code block: its info string (`text`, `json`...) and its lines.
pub struct Block {
    pub lang: String,
    pub text: String,
}

pub fn code_blocks(md: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for line in md.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (fence, open.take()) {
            (Some(info), None) => {
                open = Some(Block {
                    lang: info.trim().to_owned(),
                    text: String::new(),
                })
            }
            (Some(_), Some(block)) => blocks.push(block),
            (None, Some(mut block)) => {
                block.text.push_str(line);
                block.text.push('\n');
                open = Some(block);
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "PROTOCOL.md has an unclosed code block");
    blocks
}

/// One token of the doc's byte notation: a hex pair, `HH*N` (N copies), or a
/// `|` separator (no bytes). Anything else ends the bytes of a line.
fn token_bytes(tok: &str) -> Option<Vec<u8>> {
    let pair = |s: &str| {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u8::from_str_radix(s, 16).expect("hex pair"))
    };
    if tok == "|" {
        return Some(Vec::new());
    }
    if let Some((byte, count)) = tok.split_once('*') {
        return Some(vec![pair(byte)?; count.parse().ok()?]);
    }
    pair(tok).map(|b| vec![b])
}

/// A byte example: the doc's spelling and the bytes it stands for.
#[derive(Debug)]
pub struct ByteExample {
    pub text: String,
    pub bytes: Vec<u8>,
}

/// Fewer bytes than this at the start of a line are a diagram, not an example.
const EXAMPLE_MIN_BYTES: usize = 4;

/// Lines of text blocks that start (after an optional `C->S` / `S->C`) with a
/// run of hex bytes; the run ends at the first word, where the comment starts.
pub fn byte_examples(md: &str) -> Vec<ByteExample> {
    let mut examples = Vec::new();
    for block in code_blocks(md).iter().filter(|b| b.lang == "text") {
        for line in block.text.lines() {
            let mut tokens: Vec<&str> = line.split_whitespace().collect();
            if tokens.first().is_some_and(|t| t.contains("->")) {
                tokens.remove(0);
            }
            let run: Vec<&str> = tokens
                .iter()
                .copied()
                .take_while(|t| token_bytes(t).is_some())
                .collect();
            let bytes: Vec<u8> = run.iter().flat_map(|t| token_bytes(t).unwrap()).collect();
            if bytes.len() >= EXAMPLE_MIN_BYTES {
                let text = run.join(" ").trim_end_matches(" |").to_owned();
                examples.push(ByteExample { text, bytes });
            }
        }
    }
    examples
}

/// Bytes from a fixture `doc` string, in the same notation.
pub fn doc_bytes(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .flat_map(|t| token_bytes(t).unwrap_or_else(|| panic!("bad token {t:?} in {text:?}")))
        .collect()
}

/// Every `json` block, parsed.
pub fn json_examples(md: &str) -> Vec<Value> {
    code_blocks(md)
        .iter()
        .filter(|b| b.lang == "json")
        .map(|b| {
            serde_json::from_str(&b.text)
                .unwrap_or_else(|e| panic!("PROTOCOL.md json block is not JSON ({e}):\n{}", b.text))
        })
        .collect()
}

/// Rows `| number | name | ...` of the tables under the `## ` heading that
/// contains `heading`, as (number, name).
pub fn numbered_rows(md: &str, heading: &str) -> Vec<(u64, String)> {
    let section: Vec<&str> = md
        .lines()
        .skip_while(|l| !(l.starts_with("## ") && l.contains(heading)))
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .collect();
    assert!(
        !section.is_empty(),
        "PROTOCOL.md has no section {heading:?}"
    );
    section
        .iter()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let number = cells.get(1)?.parse().ok()?;
            Some((number, cells.get(2)?.trim_matches('`').to_owned()))
        })
        .collect()
}
