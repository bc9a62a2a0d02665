//! W3C Trace Context, level 1 (<https://www.w3.org/TR/trace-context/>): the `traceparent` and
//! `tracestate` headers, parsed strictly and formatted as version `00`.
//!
//! Owns the header grammar only; what the broker does with a context (its own spans, what it
//! stores with an event, what a webhook attempt sends) is `spans`. Nothing here does I/O.
//!
//! Why not `opentelemetry_sdk`'s `TraceContextPropagator`: it reads ids with `from_str_radix`, so
//! it takes a trace-id of any length up to 32 digits and a leading `+`, refuses unknown flags of
//! version `00`, and checks no `tracestate` limit; the spec's rules are short enough to follow
//! exactly here, with the tests below holding each of them.
//!
//! The spec's rule for a bad header is to ignore it: an invalid `traceparent` means "no incoming
//! trace" (and its `tracestate` is ignored with it); an invalid `tracestate` alone is dropped
//! and the `traceparent` kept. So parsing answers `Option`/`Result` for the caller to log, never
//! an error for the client.

use std::fmt;

/// What was wrong with a `traceparent` or `tracestate` header (for the debug log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceHeaderError {
    #[error("traceparent is not `version-traceid-parentid-flags` in lowercase hex")]
    Malformed,
    #[error("traceparent version ff is invalid")]
    ForbiddenVersion,
    #[error("traceparent has an all-zero trace-id or parent-id")]
    ZeroId,
    #[error("more than one traceparent header")]
    Repeated,
    #[error("tracestate member `{0}` is not key=value by the spec's grammar")]
    BadMember(String),
    #[error("tracestate names the key `{0}` twice")]
    DuplicateKey(String),
    #[error("tracestate has more than 32 members")]
    TooManyMembers,
}

/// A valid `traceparent`: the trace, the parent span in it, and the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

/// The one flag level 1 defines.
const SAMPLED: u8 = 0x01;
/// `00-` + 32 + `-` + 16 + `-` + 2.
const VERSION_00_LEN: usize = 55;

impl TraceParent {
    /// A context in `trace_id` whose parent is the span `parent_id`. `None` when either id is
    /// all zeros (invalid by the spec).
    pub fn new(trace_id: [u8; 16], parent_id: [u8; 8], flags: u8) -> Option<Self> {
        (trace_id != [0; 16] && parent_id != [0; 8]).then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Parses one header value. Version `00` must be exactly its 55 characters. A higher
    /// version (not `ff`) is parsed as the spec says a version-00 reader must: at least 55
    /// characters, the first 55 in version 00's shape, and a `-` after them if more follow;
    /// its flags keep only the bits version 00 knows.
    pub fn parse(raw: &str) -> Result<Self, TraceHeaderError> {
        let raw = raw.trim_matches([' ', '\t']);
        let bytes = raw.as_bytes();
        if bytes.len() < 3 || bytes[2] != b'-' {
            return Err(TraceHeaderError::Malformed);
        }
        let version = lower_hex(&bytes[..2]).ok_or(TraceHeaderError::Malformed)?[0];
        if version == 0xff {
            return Err(TraceHeaderError::ForbiddenVersion);
        }
        let head = match (version, bytes.len()) {
            (0, VERSION_00_LEN) => bytes,
            (0, _) => return Err(TraceHeaderError::Malformed),
            (_, len) if len == VERSION_00_LEN => bytes,
            (_, len) if len > VERSION_00_LEN && bytes[VERSION_00_LEN] == b'-' => {
                &bytes[..VERSION_00_LEN]
            }
            _ => return Err(TraceHeaderError::Malformed),
        };
        if head[35] != b'-' || head[52] != b'-' {
            return Err(TraceHeaderError::Malformed);
        }
        let trace_id = lower_hex(&head[3..35]).ok_or(TraceHeaderError::Malformed)?;
        let parent_id = lower_hex(&head[36..52]).ok_or(TraceHeaderError::Malformed)?;
        let flags = lower_hex(&head[53..55]).ok_or(TraceHeaderError::Malformed)?[0];
        let flags = if version == 0 { flags } else { flags & SAMPLED };
        Self::new(
            trace_id.try_into().expect("32 hex digits are 16 bytes"),
            parent_id.try_into().expect("16 hex digits are 8 bytes"),
            flags,
        )
        .ok_or(TraceHeaderError::ZeroId)
    }

    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    pub fn parent_id(&self) -> [u8; 8] {
        self.parent_id
    }

    pub fn flags(&self) -> u8 {
        self.flags
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The trace-id as 32 lowercase hex digits (what logs show).
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The same trace and flags with another parent: what the broker passes on from a span of
    /// its own.
    pub fn with_parent(&self, parent_id: [u8; 8]) -> Option<Self> {
        Self::new(self.trace_id, parent_id, self.flags)
    }
}

/// Always version `00`: the one this broker speaks, whatever version it was given.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            self.flags
        )
    }
}

/// Decodes lowercase hex only (the spec's HEXDIGLC); `None` for anything else.
fn lower_hex(digits: &[u8]) -> Option<Vec<u8>> {
    if !digits.len().is_multiple_of(2)
        || !digits
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    hex::decode(digits).ok()
}

/// A valid `tracestate`: 1 to 32 `key=value` members, keys unique, joined by `,` without the
/// optional whitespace, at most [`TraceState::MAX_LEN`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceState(String);

impl TraceState {
    /// The length the spec asks vendors to propagate at least; longer lists are cut to it.
    pub const MAX_LEN: usize = 512;
    /// Most members a list may have.
    pub const MAX_MEMBERS: usize = 32;
    /// Members longer than this go first when a list must be cut.
    const LONG_MEMBER: usize = 128;

    /// Parses the values of every `tracestate` header of a request (several headers are one
    /// comma-separated list). Empty members (`a=1,,b=2`) are allowed and dropped. `Ok(None)` when
    /// nothing is left. A list over 512 characters is cut as the spec recommends: members over
    /// 128 characters are removed first, then members from the end.
    pub fn parse<'a>(
        values: impl IntoIterator<Item = &'a str>,
    ) -> Result<Option<Self>, TraceHeaderError> {
        let mut members: Vec<&str> = Vec::new();
        for value in values {
            for member in value.split(',') {
                let member = member.trim_matches([' ', '\t']);
                if member.is_empty() {
                    continue;
                }
                let (key, _) = member
                    .split_once('=')
                    .filter(|(k, v)| valid_key(k) && valid_value(v))
                    .ok_or_else(|| TraceHeaderError::BadMember(member.to_owned()))?;
                if members
                    .iter()
                    .any(|m| m.split_once('=').map(|p| p.0) == Some(key))
                {
                    return Err(TraceHeaderError::DuplicateKey(key.to_owned()));
                }
                members.push(member);
                if members.len() > Self::MAX_MEMBERS {
                    return Err(TraceHeaderError::TooManyMembers);
                }
            }
        }
        let joined_len =
            |m: &[&str]| m.iter().map(|s| s.len()).sum::<usize>() + m.len().saturating_sub(1);
        if joined_len(&members) > Self::MAX_LEN {
            members.retain(|m| m.len() <= Self::LONG_MEMBER);
            while joined_len(&members) > Self::MAX_LEN {
                members.pop();
            }
        }
        Ok((!members.is_empty()).then(|| Self(members.join(","))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/')
}

/// `simple-key = lcalpha 0*255(keychar)`, or `tenant-id "@" system-id` with
/// `tenant-id = (lcalpha / DIGIT) 0*240(keychar)` and `system-id = lcalpha 0*13(keychar)`.
fn valid_key(key: &str) -> bool {
    let part = |s: &str, first: fn(u8) -> bool, max: usize| {
        let b = s.as_bytes();
        !b.is_empty() && b.len() <= max && first(b[0]) && b[1..].iter().all(|&c| is_key_char(c))
    };
    match key.split_once('@') {
        None => part(key, |c| c.is_ascii_lowercase(), 256),
        Some((tenant, system)) => {
            part(
                tenant,
                |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
                241,
            ) && part(system, |c| c.is_ascii_lowercase(), 14)
        }
    }
}

/// `value = 0*255(chr) nblk-chr`: 1 to 256 printable ASCII characters but `,` and `=`, spaces
/// allowed except at the end.
fn valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    let nblk = |c: u8| (0x21..=0x7e).contains(&c) && c != b',' && c != b'=';
    !b.is_empty()
        && b.len() <= 256
        && nblk(b[b.len() - 1])
        && b.iter().all(|&c| c == b' ' || nblk(c))
}

/// What a request (or an event) carries of a trace: the parent and the vendors' state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub parent: TraceParent,
    pub state: Option<TraceState>,
}

impl TraceContext {
    /// The context of a request's headers, by the spec's rules: no valid `traceparent` (none,
    /// more than one, or a bad one) means no context, whatever `tracestate` says; a bad
    /// `tracestate` is dropped. The error says what was ignored, for the log.
    pub fn from_headers<'a>(
        traceparent: &[&'a str],
        tracestate: &[&'a str],
    ) -> (Option<Self>, Option<TraceHeaderError>) {
        let parent = match traceparent {
            [] => return (None, None),
            [one] => TraceParent::parse(one),
            _ => Err(TraceHeaderError::Repeated),
        };
        let parent = match parent {
            Ok(parent) => parent,
            Err(e) => return (None, Some(e)),
        };
        match TraceState::parse(tracestate.iter().copied()) {
            Ok(state) => (Some(Self { parent, state }), None),
            Err(e) => (
                Some(Self {
                    parent,
                    state: None,
                }),
                Some(e),
            ),
        }
    }

    /// A context stored with an event, read back: `None` for anything that does not parse
    /// (never stored so, but a column is not a type).
    pub fn from_stored(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let parent = TraceParent::parse(traceparent?).ok()?;
        Some(Self {
            parent,
            state: tracestate.and_then(|s| TraceState::parse([s]).ok().flatten()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_version_00_traceparent_parses_and_prints_back() {
        let parent = TraceParent::parse(VALID).unwrap();
        assert_eq!(parent.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(parent.parent_id()), "00f067aa0ba902b7");
        assert!(parent.sampled());
        assert_eq!(parent.to_string(), VALID);
        let unsampled = VALID.replace("-01", "-00");
        assert!(!TraceParent::parse(&unsampled).unwrap().sampled());
        // Flags level 1 does not define are kept on version 00 (and not a reason to refuse).
        assert_eq!(
            TraceParent::parse(&VALID.replace("-01", "-03"))
                .unwrap()
                .flags(),
            3
        );
        // Surrounding optional whitespace is not part of the value.
        assert!(TraceParent::parse(&format!(" {VALID}\t")).is_ok());
    }

    #[test]
    fn each_kind_of_bad_traceparent_is_refused() {
        let cases: &[(&str, TraceHeaderError)] = &[
            ("", TraceHeaderError::Malformed),
            ("00", TraceHeaderError::Malformed),
            (&VALID.to_uppercase(), TraceHeaderError::Malformed),
            (&VALID.replace("4bf9", "4BF9"), TraceHeaderError::Malformed),
            (&VALID.replace("00f0", "00F0"), TraceHeaderError::Malformed),
            (&VALID.replace("4bf9", "4bfg"), TraceHeaderError::Malformed),
            (&VALID.replace("-01", "-1"), TraceHeaderError::Malformed),
            (&VALID.replace("-01", "-0x"), TraceHeaderError::Malformed),
            (
                &VALID.replace("4bf92f", "4bf92"),
                TraceHeaderError::Malformed,
            ),
            (
                &VALID.replace("4bf92f", "+bf92f"),
                TraceHeaderError::Malformed,
            ),
            (&VALID.replacen('-', "_", 1), TraceHeaderError::Malformed),
            (&format!("{VALID}-extra"), TraceHeaderError::Malformed),
            (&format!("{VALID}0"), TraceHeaderError::Malformed),
            (
                "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceHeaderError::Malformed,
            ),
            (
                "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceHeaderError::Malformed,
            ),
            (
                &VALID.replacen("00", "ff", 1),
                TraceHeaderError::ForbiddenVersion,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceHeaderError::ZeroId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceHeaderError::ZeroId,
            ),
        ];
        for (raw, error) in cases {
            assert_eq!(TraceParent::parse(raw), Err(error.clone()), "{raw:?}");
        }
    }

    #[test]
    fn a_future_version_is_read_as_version_00_where_it_can_be() {
        // Exactly 55 characters, or more after a dash: the first 55 are read.
        let v1 = VALID.replacen("00", "01", 1);
        assert_eq!(
            TraceParent::parse(&v1).unwrap().trace_id_hex(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let longer = format!("{}-what-comes-next", VALID.replacen("00", "cc", 1));
        let parsed = TraceParent::parse(&longer).unwrap();
        assert_eq!(parsed.to_string(), VALID, "propagated as version 00");
        // Flags unknown to version 00 are dropped from a future version's.
        let flags = VALID.replacen("00", "02", 1).replace("-01", "-ff");
        assert_eq!(TraceParent::parse(&flags).unwrap().flags(), 0x01);
        // Shorter than 55, or more without a dash: not a traceparent.
        assert!(TraceParent::parse(&v1[..54]).is_err());
        assert!(TraceParent::parse(&format!("{v1}x")).is_err());
        // The version-00 shape is still required of the first 55 characters.
        assert!(TraceParent::parse(&v1.replace("-01", "-zz")).is_err());
    }

    #[test]
    fn tracestate_members_follow_the_grammar() {
        let state = TraceState::parse(["rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", "x@vendor=a b"])
            .unwrap()
            .unwrap();
        assert_eq!(
            state.as_str(),
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,x@vendor=a b"
        );
        assert_eq!(
            TraceState::parse(["a=1,,  ,b=2"])
                .unwrap()
                .unwrap()
                .as_str(),
            "a=1,b=2"
        );
        assert_eq!(TraceState::parse([" "]).unwrap(), None);
        assert_eq!(TraceState::parse([]).unwrap(), None);
        // Digits may start a tenant id, not a simple key; `*` and `/` are key characters.
        assert!(
            TraceState::parse(["1tenant@sys=v", "k*/_-=v"])
                .unwrap()
                .is_some()
        );
        for bad in [
            "Rojo=1",
            "1key=v",
            "key",
            "key=",
            "=v",
            "key=a,b=",
            "key=tab\tinside",
            "key=é",
            "key=a=b",
            "t@Sys=v",
            "t@systemnamelong15=v",
            "@sys=v",
        ] {
            assert!(
                matches!(
                    TraceState::parse([bad]),
                    Err(TraceHeaderError::BadMember(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            TraceState::parse(["a=1", "a=2"]),
            Err(TraceHeaderError::DuplicateKey("a".into()))
        );
        let long_key = format!("k{}=v", "a".repeat(256));
        assert!(TraceState::parse([long_key.as_str()]).is_err());
        let long_value = format!("k={}", "v".repeat(257));
        assert!(TraceState::parse([long_value.as_str()]).is_err());
    }

    #[test]
    fn tracestate_has_at_most_32_members_and_is_cut_to_512_characters() {
        let members: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        assert!(
            TraceState::parse([members.join(",").as_str()])
                .unwrap()
                .is_some()
        );
        let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(
            TraceState::parse([too_many.join(",").as_str()]),
            Err(TraceHeaderError::TooManyMembers)
        );
        // 129-character members go first, then members from the end.
        let big = format!("big={}", "x".repeat(125));
        // 30 characters each: 16 of them (with commas) fit in 512, 17 do not.
        let small: Vec<String> = (0..20)
            .map(|i| format!("k{i:02}={}", "y".repeat(26)))
            .collect();
        let list = format!("{},{big},{}", small[..10].join(","), small[10..].join(","));
        let cut = TraceState::parse([list.as_str()]).unwrap().unwrap();
        assert!(cut.as_str().len() <= TraceState::MAX_LEN);
        assert!(!cut.as_str().contains("big="));
        assert!(cut.as_str().starts_with("k00="));
        assert_eq!(cut.as_str(), small[..16].join(","));
    }

    #[test]
    fn headers_follow_the_specs_rule_for_what_is_ignored() {
        let (context, error) = TraceContext::from_headers(&[VALID], &["a=1"]);
        let context = context.unwrap();
        assert_eq!(context.parent.to_string(), VALID);
        assert_eq!(context.state.unwrap().as_str(), "a=1");
        assert_eq!(error, None);
        // A bad tracestate is dropped; the traceparent stays.
        let (context, error) = TraceContext::from_headers(&[VALID], &["A=1"]);
        assert_eq!(context.unwrap().state, None);
        assert!(matches!(error, Some(TraceHeaderError::BadMember(_))));
        // A bad traceparent takes its tracestate with it.
        let (context, error) = TraceContext::from_headers(&["00-xyz"], &["a=1"]);
        assert_eq!((context, error), (None, Some(TraceHeaderError::Malformed)));
        let (context, error) = TraceContext::from_headers(&[VALID, VALID], &[]);
        assert_eq!((context, error), (None, Some(TraceHeaderError::Repeated)));
        assert_eq!(TraceContext::from_headers(&[], &["a=1"]), (None, None));
        // What is stored reads back.
        let stored = TraceContext::from_stored(Some(VALID), Some("a=1")).unwrap();
        assert_eq!(stored.state.unwrap().as_str(), "a=1");
        assert_eq!(TraceContext::from_stored(None, Some("a=1")), None);
    }
}
