//! Injection probes in one value (a decoded query value, a path, a JSON body): SQL (tautologies,
//! `UNION SELECT`, stacked queries, time-based and error-based functions), script injection,
//! path traversal and SSRF-style URLs aimed at internal hosts.
//!
//! Cheap first: a value without any of a few trigger bytes (quote, `<`, `;`, `(`, `.`, `:`,
//! `%`, `\`, `/`, `#`, `-`, `=`, `@`) is clean after one pass over its bytes, with no allocation;
//! only a value that has one is searched for a fixed set of needles in one pass (an Aho-Corasick
//! automaton, ASCII case-insensitive), then lowered once for the few SQL shapes that need
//! parsing (`UNION SELECT`, stacked queries, tautologies). No regular expressions.
//!
//! Why not a detector crate: `libinjection` (FFI) fails to build offline, and its pure-Rust port
//! `libinjectionrs` 0.1.1 covers SQL and XSS only (no traversal or SSRF) and is a first release;
//! the needles here are tested against the project's sqlmap-style fixture list and benign FHIR
//! values (`tests` below and `crates/cli/tests/it/fixtures/injection-probes.txt`).

use std::sync::LazyLock;

use aho_corasick::AhoCorasick;
use memchr::memmem;

/// What a probe looked like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Sql,
    Script,
    PathTraversal,
    Ssrf,
}

/// Bytes at least one of which every probe this module knows carries.
const fn trigger_table() -> [bool; 256] {
    let mut t = [false; 256];
    let bytes = b"'\"<;(.:%\\/#-=@`";
    let mut i = 0;
    while i < bytes.len() {
        t[bytes[i] as usize] = true;
        i += 1;
    }
    t
}
static TRIGGER: [bool; 256] = trigger_table();

/// Values longer than this are scanned on their first bytes only (bodies are bounded anyway).
const MAX_SCAN: usize = 256 * 1024;

/// Needles whose presence alone is a probe (lowercase).
const SQL_NEEDLES: &[&str] = &[
    "pg_sleep(",
    "sleep(",
    "benchmark(",
    "waitfor delay",
    "information_schema",
    "@@version",
    "extractvalue(",
    "updatexml(",
    "load_file(",
    "into outfile",
    "xp_cmdshell",
    "dbms_pipe",
    "utl_inaddr",
    "randomblob(",
    "sqlite_master",
    "pg_catalog",
];
const SCRIPT_NEEDLES: &[&str] = &[
    "<script",
    "javascript:",
    "vbscript:",
    "onerror=",
    "onload=",
    "onmouseover=",
    "<iframe",
    "document.cookie",
    "<svg/on",
];
const TRAVERSAL_NEEDLES: &[&str] = &[
    "../",
    "..\\",
    "%2e%2e",
    "..%2f",
    "..%5c",
    "/etc/passwd",
    "c:\\windows",
];
/// Statements that after a `;` make a stacked query.
const STACKED: &[&str] = &[
    "select", "insert", "update", "delete", "drop", "create", "alter", "exec", "shutdown",
    "truncate",
];
/// Hosts a URL in a request has no business naming.
const INTERNAL_HOSTS: &[&str] = &[
    "localhost",
    "127.",
    "0.0.0.0",
    "0x7f",
    "10.",
    "192.168.",
    "169.254.",
    "[::1]",
    "[::]",
    "[fd",
    "[fc",
    "[fe80",
    "metadata.google.internal",
];

/// Whether `value` has any byte a probe needs (the prefilter: one pass, no allocation).
pub fn has_trigger(value: &[u8]) -> bool {
    value.iter().any(|b| TRIGGER[usize::from(*b)])
}

/// The probe `value` carries, if any.
pub fn scan(value: &[u8]) -> Option<Probe> {
    let value = &value[..value.len().min(MAX_SCAN)];
    if !has_trigger(value) {
        return None;
    }
    if let Some(probe) = needle_probe(value) {
        return Some(probe);
    }
    let lower = value.to_ascii_lowercase();
    if union_select(&lower) || stacked_query(&lower) || tautology(&lower) || quote_comment(&lower) {
        return Some(Probe::Sql);
    }
    if ssrf(&lower) {
        return Some(Probe::Ssrf);
    }
    None
}

/// Every fixed needle in one automaton, ASCII case-insensitive, each with the probe it means:
/// one pass over the value instead of one per needle, and no lowered copy when a needle hits.
static NEEDLES: LazyLock<Option<(AhoCorasick, Vec<Probe>)>> = LazyLock::new(|| {
    let kinds: Vec<(&str, Probe)> = TRAVERSAL_NEEDLES
        .iter()
        .map(|n| (*n, Probe::PathTraversal))
        .chain(SCRIPT_NEEDLES.iter().map(|n| (*n, Probe::Script)))
        .chain(SQL_NEEDLES.iter().map(|n| (*n, Probe::Sql)))
        .collect();
    let automaton = AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(kinds.iter().map(|(n, _)| n))
        .ok()?;
    Some((automaton, kinds.into_iter().map(|(_, p)| p).collect()))
});

/// The probe a fixed needle in `value` means; where several match, traversal before script
/// before SQL (the order in which `scan` reports them).
fn needle_probe(value: &[u8]) -> Option<Probe> {
    let rank = |p: Probe| match p {
        Probe::PathTraversal => 0,
        Probe::Script => 1,
        Probe::Sql | Probe::Ssrf => 2,
    };
    let Some((automaton, kinds)) = NEEDLES.as_ref() else {
        // The automaton is built from constants and cannot fail; should it, search one by one.
        return needle_probe_one_by_one(value);
    };
    let mut found: Option<Probe> = None;
    for m in automaton.find_overlapping_iter(value) {
        let probe = kinds[m.pattern().as_usize()];
        if probe == Probe::PathTraversal {
            return Some(probe);
        }
        if found.is_none_or(|f| rank(probe) < rank(f)) {
            found = Some(probe);
        }
    }
    found
}

/// [`needle_probe`] one needle at a time over a lowered copy.
fn needle_probe_one_by_one(value: &[u8]) -> Option<Probe> {
    let lower = value.to_ascii_lowercase();
    let has = |needle: &&str| memmem::find(&lower, needle.as_bytes()).is_some();
    [
        (TRAVERSAL_NEEDLES, Probe::PathTraversal),
        (SCRIPT_NEEDLES, Probe::Script),
        (SQL_NEEDLES, Probe::Sql),
    ]
    .into_iter()
    .find_map(|(needles, probe)| needles.iter().any(has).then_some(probe))
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Skip spaces and SQL comments (`/**/`) from `i`.
fn skip_blank(s: &[u8], mut i: usize) -> usize {
    loop {
        while s
            .get(i)
            .is_some_and(|b| b.is_ascii_whitespace() || *b == b'+')
        {
            i += 1;
        }
        if s.get(i..i + 2) == Some(b"/*") {
            match memmem::find(s.get(i + 2..).unwrap_or_default(), b"*/") {
                Some(end) => i += end + 4,
                None => return s.len(),
            }
        } else {
            return i;
        }
    }
}

/// Every position where `word` starts as a whole word.
fn words<'a>(s: &'a [u8], word: &'a str) -> impl Iterator<Item = usize> + 'a {
    memmem::find_iter(s, word.as_bytes()).filter(move |&i| {
        let before = i.checked_sub(1).and_then(|j| s.get(j)).copied();
        let after = s.get(i + word.len()).copied();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// `UNION [ALL|DISTINCT] SELECT`.
fn union_select(s: &[u8]) -> bool {
    words(s, "union").any(|i| {
        let mut j = skip_blank(s, i + 5);
        for modifier in ["all", "distinct"] {
            if s.get(j..j + modifier.len()) == Some(modifier.as_bytes()) {
                j = skip_blank(s, j + modifier.len());
            }
        }
        s.get(j..j + 6) == Some(b"select")
    })
}

/// `; SELECT ...`, `; DROP ...`.
fn stacked_query(s: &[u8]) -> bool {
    memchr::memchr_iter(b';', s).any(|i| {
        let j = skip_blank(s, i + 1);
        STACKED.iter().any(|w| {
            s.get(j..j + w.len()) == Some(w.as_bytes())
                && !s.get(j + w.len()).copied().is_some_and(is_word)
        })
    })
}

/// `OR 1=1`, `' OR 'a'='a`, `AND 5012=5012`, `OR x LIKE x`, `OR true--`: a boolean operator
/// followed by an operand and a comparison.
fn tautology(s: &[u8]) -> bool {
    ["or", "and", "xor", "||", "&&"].iter().any(|op| {
        let starts: Vec<usize> = if op.as_bytes()[0].is_ascii_alphabetic() {
            words(s, op).collect()
        } else {
            memmem::find_iter(s, op.as_bytes()).collect()
        };
        starts.into_iter().any(|i| {
            let j = skip_blank(s, i + op.len());
            let Some(k) = operand_end(s, j) else {
                return false;
            };
            if matches!(s.get(j..k), Some(b"true" | b"false" | b"null")) {
                let after = skip_blank(s, k);
                return matches!(s.get(after), None | Some(b'-' | b'#' | b')' | b'\''));
            }
            let k = skip_blank(s, k);
            match s.get(k) {
                Some(b'=' | b'<' | b'>') => true,
                Some(b'!') => s.get(k + 1) == Some(&b'='),
                _ => {
                    s.get(k..k + 4) == Some(b"like")
                        || s.get(k..k + 7) == Some(b"between")
                        || s.get(k..k + 6) == Some(b"regexp")
                }
            }
        })
    })
}

/// The end of an operand starting at `j`: a quoted string, a number or a word.
fn operand_end(s: &[u8], j: usize) -> Option<usize> {
    let first = *s.get(j)?;
    if first == b'\'' || first == b'"' {
        let close = memchr::memchr(first, s.get(j + 1..)?)?;
        return Some(j + close + 2);
    }
    if first == b'(' {
        return operand_end(s, skip_blank(s, j + 1));
    }
    let len = s.get(j..)?.iter().take_while(|b| is_word(**b)).count();
    (len > 0).then_some(j + len)
}

/// A single quote closed and the rest commented out: `admin'--`, `1'#`, `x')/*`.
fn quote_comment(s: &[u8]) -> bool {
    memchr::memchr_iter(b'\'', s).any(|i| {
        let mut j = i + 1;
        while s.get(j) == Some(&b')') {
            j += 1;
        }
        let j = skip_blank_spaces(s, j);
        match s.get(j..j + 2) {
            Some(b"--") => true,
            Some([b'#', _]) => true,
            _ => s.get(j) == Some(&b'#') && j + 1 == s.len(),
        }
    })
}

fn skip_blank_spaces(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(|b| *b == b' ' || *b == b'+') {
        i += 1;
    }
    i
}

/// A URL whose scheme is not web, or whose host is internal.
fn ssrf(s: &[u8]) -> bool {
    memmem::find_iter(s, b"://").any(|i| {
        let scheme_start = s[..i]
            .iter()
            .rposition(|b| !(b.is_ascii_alphanumeric() || *b == b'+' || *b == b'-'))
            .map_or(0, |p| p + 1);
        // By its end: a value may glue the URL to text before it (`xhttp://...`).
        let scheme = &s[scheme_start..i];
        let is = |names: &[&str]| names.iter().any(|n| scheme.ends_with(n.as_bytes()));
        if is(&["file", "gopher", "dict", "ldap", "tftp"]) {
            return true;
        }
        if !is(&["http", "https", "ftp"]) {
            return false;
        }
        let rest = &s[i + 3..];
        let authority_end = rest
            .iter()
            .position(|b| matches!(b, b'/' | b'?' | b'#' | b'"' | b' '))
            .unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let host = match memchr::memrchr(b'@', authority) {
            Some(at) => &authority[at + 1..],
            None => authority,
        };
        INTERNAL_HOSTS
            .iter()
            .any(|h| host.starts_with(h.as_bytes()))
            || private_172(host)
            || (!host.is_empty() && host.iter().all(u8::is_ascii_digit))
    })
}

/// 172.16.0.0/12.
fn private_172(host: &[u8]) -> bool {
    let Some(rest) = host.strip_prefix(b"172.") else {
        return false;
    };
    let octet: Vec<u8> = rest
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&octet)
        .ok()
        .and_then(|o| o.parse::<u8>().ok())
        .is_some_and(|o| (16..=31).contains(&o))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBES: &str = include_str!("../../../cli/tests/it/fixtures/injection-probes.txt");

    #[test]
    fn every_fixture_probe_is_caught() {
        let mut n = 0;
        for line in PROBES
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            assert!(scan(line.as_bytes()).is_some(), "missed: {line}");
            n += 1;
        }
        assert!(n >= 40, "{n} probes");
    }

    #[test]
    fn each_kind_is_named() {
        assert_eq!(scan(b"1' OR '1'='1"), Some(Probe::Sql));
        assert_eq!(scan(b"1 UNION/**/ALL SELECT null,null--"), Some(Probe::Sql));
        assert_eq!(scan(b"1; DROP TABLE resource_version"), Some(Probe::Sql));
        assert_eq!(scan(b"1' AND pg_sleep(5)--"), Some(Probe::Sql));
        assert_eq!(scan(b"<ScRiPt>alert(1)</script>"), Some(Probe::Script));
        assert_eq!(scan(b"../../etc/passwd"), Some(Probe::PathTraversal));
        assert_eq!(
            scan(b"http://169.254.169.254/latest/meta-data/"),
            Some(Probe::Ssrf)
        );
        assert_eq!(scan(b"file:///etc/shadow"), Some(Probe::Ssrf));
        assert_eq!(scan(b"https://user@10.0.0.5:8080/x"), Some(Probe::Ssrf));
        assert_eq!(scan(b"http://172.20.1.1/"), Some(Probe::Ssrf));
        assert_eq!(scan(b"xyzhttp://127.0.0.1/"), Some(Probe::Ssrf));
    }

    #[test]
    fn the_automaton_finds_what_one_by_one_search_finds() {
        assert!(NEEDLES.is_some(), "the needle automaton builds");
        let mixed = [
            "<SCRIPT>../etc",
            "x<script>pg_sleep(5)",
            "PG_SLEEP(5)",
            "InFoRmAtIoN_ScHeMa",
            "..%2F..%2Fetc",
            "javascript:alert(1) UNION",
            "pain and swelling",
            "",
        ];
        let fixtures = PROBES.lines().filter(|l| !l.starts_with('#'));
        for v in fixtures.chain(mixed) {
            assert_eq!(
                needle_probe(v.as_bytes()),
                needle_probe_one_by_one(v.as_bytes()),
                "{v}"
            );
        }
        assert_eq!(needle_probe(b"<SCRIPT>../etc"), Some(Probe::PathTraversal));
        assert_eq!(needle_probe(b"x<script>pg_sleep(5)"), Some(Probe::Script));
        assert_eq!(needle_probe(b"PG_SLEEP(5)"), Some(Probe::Sql));
    }

    #[test]
    fn benign_fhir_values_pass() {
        for v in [
            "smith",
            "O'Brien",
            "D'Angelo-Smith",
            "Patient/123",
            "http://loinc.org|8867-4",
            "https://fhir.example.org/fhir/Patient/abc-123",
            "http://hl7.org/fhir/sid/us-ssn|999-99-9999",
            "ge2020-01-01T00:00:00Z",
            "le2021-12-31",
            "pain and swelling",
            "rock and roll",
            "black or white",
            "Mary-Ann",
            "1.5",
            "urn:uuid:0f3a9c8e-1b2c-4d5e-8f90-123456789abc",
            "name:contains=ann",
            "Observation:subject",
            "-_lastUpdated",
            "a@example.org",
            "Andersson",
            "Organization/org-1",
            "#contained-1",
        ] {
            assert_eq!(scan(v.as_bytes()), None, "{v}");
        }
    }

    #[test]
    fn benign_fhir_json_passes() {
        let body = br#"{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}]},"subject":{"reference":"Patient/p-1"},"effectiveDateTime":"2024-03-01T10:00:00+01:00","valueQuantity":{"value":72.5,"unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"},"text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Heart rate 72 or so; taken at rest</p></div>"},"note":[{"text":"Patient's own device -- checked"}]}"#;
        assert_eq!(scan(body), None);
    }

    #[test]
    fn a_probe_inside_json_is_caught() {
        let body = br#"{"resourceType":"Patient","name":[{"family":"x' UNION SELECT password FROM credential--"}]}"#;
        assert_eq!(scan(body), Some(Probe::Sql));
        let body = br#"{"resourceType":"Patient","photo":[{"url":"http://127.0.0.1:5432/"}]}"#;
        assert_eq!(scan(body), Some(Probe::Ssrf));
    }
}
