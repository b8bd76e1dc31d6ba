//! Client classes: a small, safe match language, compiled once at config load.
//!
//! A class is a name, a `match` expression and what membership brings (options, and the pools
//! restricted to it). The language has no loops, no variables and no calls: an expression is a
//! tree of tests joined by `and`, `or`, `not` and parentheses, evaluated in a few comparisons
//! per packet. Grammar (words are case-sensitive, strings are byte-exact):
//!
//! ```text
//! expr   := and ("or" and)*
//! and    := unary ("and" unary)*
//! unary  := "not" unary | "(" expr ")" | test
//! test   := field "exists"
//!         | field op value
//!         | "subnet" ("==" | "!=") CIDR
//!         | "member" STRING                   a class defined earlier in the list
//! field  := "vendor-class" (option 60) | "user-class" (option 77) | "mac" | "client-id" (61)
//!         | "hostname" (12, else 81's name) | "circuit-id" (82.1) | "remote-id" (82.2) | "relay[N]" (82.N)
//! op     := "==" | "!=" | "starts-with" | "ends-with" | "contains"
//! value  := "text" (\" and \\ escape) | 0x0a0b... | 0a:0b:...  (hex bytes)
//! ```
//!
//! `user-class` matches the whole option or any one of its RFC 3004 instances. A field that
//! the message lacks makes every test on it false (and `!=` too: absent is not "different").

use std::fmt;

use ipnet::Ipv4Net;

/// At most this many classes: membership is a 64-bit set.
pub const MAX_CLASSES: usize = 64;

/// The classes a client belongs to, as bits in config order.
pub type ClassSet = u64;

/// What a message offers to match on. Built per packet from already-parsed fields (no copies).
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    pub vendor_class: Option<&'a [u8]>,
    pub user_class: Option<&'a [u8]>,
    pub mac: &'a [u8],
    pub client_id: Option<&'a [u8]>,
    pub hostname: &'a [u8],
    /// Option 82's body.
    pub relay: Option<&'a [u8]>,
    /// The subnet the message arrived for.
    pub subnet: Option<Ipv4Net>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    VendorClass,
    UserClass,
    Mac,
    ClientId,
    Hostname,
    Relay(u8),
}

impl Field {
    fn values<'a>(self, facts: &Facts<'a>) -> Values<'a> {
        let one = |v: Option<&'a [u8]>| Values {
            first: v,
            instances: None,
        };
        match self {
            Self::VendorClass => one(facts.vendor_class),
            Self::UserClass => Values {
                first: facts.user_class,
                instances: facts.user_class.filter(|b| rfc3004_instances(b).is_some()),
            },
            Self::Mac => one(Some(facts.mac).filter(|m| !m.is_empty())),
            Self::ClientId => one(facts.client_id),
            Self::Hostname => one(Some(facts.hostname).filter(|h| !h.is_empty())),
            Self::Relay(code) => one(facts
                .relay
                .and_then(|r| crate::protocol::relay_sub_option(r, code))),
        }
    }
}

/// The values a field has in one message: the whole option, and for user-class its RFC 3004
/// instances (each `len, data`).
struct Values<'a> {
    first: Option<&'a [u8]>,
    instances: Option<&'a [u8]>,
}

impl Values<'_> {
    fn any(&self, mut test: impl FnMut(&[u8]) -> bool) -> bool {
        if self.first.is_some_and(&mut test) {
            return true;
        }
        let Some(mut rest) = self.instances else {
            return false;
        };
        while let [len, tail @ ..] = rest {
            let Some((item, more)) = tail.split_at_checked(usize::from(*len)) else {
                return false;
            };
            if test(item) {
                return true;
            }
            rest = more;
        }
        false
    }
}

/// `data` as RFC 3004 user class instances (`len data`, non-empty each), when it is one.
fn rfc3004_instances(data: &[u8]) -> Option<()> {
    let mut rest = data;
    while let [len, tail @ ..] = rest {
        let len = usize::from(*len);
        if len == 0 || len > tail.len() {
            return None;
        }
        rest = &tail[len..];
    }
    Some(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    StartsWith,
    EndsWith,
    Contains,
}

/// A compiled expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Or(Vec<Self>),
    And(Vec<Self>),
    Not(Box<Self>),
    Exists(FieldRef),
    Compare(FieldRef, CompareOp, Vec<u8>),
    Subnet {
        net: Ipv4Net,
        equal: bool,
    },
    /// Membership of an earlier class (its bit).
    Member(u32),
}

/// A field, opaque outside this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldRef(Field);

/// An operator, opaque outside this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompareOp(Op);

impl Expr {
    /// Whether a message with `facts`, already in the classes `earlier`, matches.
    pub fn matches(&self, facts: &Facts<'_>, earlier: ClassSet) -> bool {
        match self {
            Self::Or(all) => all.iter().any(|e| e.matches(facts, earlier)),
            Self::And(all) => all.iter().all(|e| e.matches(facts, earlier)),
            Self::Not(e) => !e.matches(facts, earlier),
            Self::Exists(FieldRef(f)) => f.values(facts).first.is_some(),
            Self::Compare(FieldRef(f), CompareOp(op), value) => {
                let values = f.values(facts);
                match op {
                    // Present and different: an absent field is not "not equal".
                    Op::Ne => values.first.is_some() && !values.any(|v| v == &value[..]),
                    Op::Eq => values.any(|v| v == &value[..]),
                    Op::StartsWith => values.any(|v| v.starts_with(value)),
                    Op::EndsWith => values.any(|v| v.ends_with(value)),
                    Op::Contains => values.any(|v| {
                        value.is_empty() || v.windows(value.len()).any(|w| w == &value[..])
                    }),
                }
            }
            Self::Subnet { net, equal } => facts.subnet.is_some_and(|s| (s == *net) == *equal),
            Self::Member(bit) => earlier & (1 << bit) != 0,
        }
    }
}

/// A compile error: where in the text (1-based column) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: {}", self.column, self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Str(Vec<u8>),
    Open,
    Close,
    Eq,
    Ne,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Word(w) => write!(f, "`{w}`"),
            Self::Str(_) => f.write_str("a string"),
            Self::Open => f.write_str("`(`"),
            Self::Close => f.write_str("`)`"),
            Self::Eq => f.write_str("`==`"),
            Self::Ne => f.write_str("`!=`"),
        }
    }
}

/// Splits `text` into tokens with their 1-based columns.
fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, ParseError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let fail = |at: usize, message: String| ParseError {
        column: at + 1,
        message,
    };
    while i < chars.len() {
        let (at, c) = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push((at + 1, Token::Open));
                i += 1;
            }
            ')' => {
                out.push((at + 1, Token::Close));
                i += 1;
            }
            '=' | '!' => {
                if chars.get(i + 1).map(|(_, c)| *c) != Some('=') {
                    return Err(fail(at, format!("`{c}` must be followed by `=`")));
                }
                out.push((at + 1, if c == '=' { Token::Eq } else { Token::Ne }));
                i += 2;
            }
            '"' => {
                let mut bytes = Vec::new();
                i += 1;
                loop {
                    let Some(&(_, c)) = chars.get(i) else {
                        return Err(fail(at, "unterminated string".into()));
                    };
                    i += 1;
                    match c {
                        '"' => break,
                        '\\' => match chars.get(i) {
                            Some((_, e @ ('"' | '\\'))) => {
                                bytes.push(*e as u8);
                                i += 1;
                            }
                            _ => {
                                return Err(fail(
                                    chars.get(i - 1).map_or(at, |(p, _)| *p),
                                    "only \\\" and \\\\ are escapes".into(),
                                ));
                            }
                        },
                        c => {
                            let mut b = [0; 4];
                            bytes.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                        }
                    }
                }
                out.push((at + 1, Token::Str(bytes)));
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].1.is_whitespace()
                    && !matches!(chars[i].1, '(' | ')' | '"' | '=' | '!')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().map(|(_, c)| *c).collect();
                out.push((at + 1, Token::Word(word)));
            }
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<(usize, Token)>,
    at: usize,
    end_column: usize,
    /// Earlier classes by name, with their bit.
    classes: &'a [String],
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(_, t)| t)
    }

    fn column(&self) -> usize {
        self.tokens
            .get(self.at)
            .map_or(self.end_column, |(c, _)| *c)
    }

    fn fail(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            column: self.column(),
            message: message.into(),
        }
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).map(|(_, t)| t.clone());
        self.at += 1;
        t
    }

    fn word_is(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(x)) if x == w)
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, ParseError> {
        if depth > 32 {
            return Err(self.fail("nested too deeply (at most 32 levels)"));
        }
        self.joined("or", depth, Self::and, Expr::Or)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, ParseError> {
        self.joined("and", depth, Self::unary, Expr::And)
    }

    /// `item (word item)*`, as one item or all of them wrapped.
    fn joined(
        &mut self,
        word: &str,
        depth: usize,
        item: fn(&mut Self, usize) -> Result<Expr, ParseError>,
        wrap: fn(Vec<Expr>) -> Expr,
    ) -> Result<Expr, ParseError> {
        let mut all = vec![item(self, depth)?];
        while self.word_is(word) {
            self.at += 1;
            all.push(item(self, depth)?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            wrap(all)
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, ParseError> {
        if self.word_is("not") {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.unary(depth + 1)?)));
        }
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let e = self.expr(depth + 1)?;
            if self.peek() != Some(&Token::Close) {
                return Err(self.fail("expected `)`"));
            }
            self.at += 1;
            return Ok(e);
        }
        self.test()
    }

    fn test(&mut self) -> Result<Expr, ParseError> {
        let column = self.column();
        let word = match self.next() {
            Some(Token::Word(w)) => w,
            Some(t) => {
                self.at -= 1;
                return Err(self.fail(format!("expected a field, found {t}")));
            }
            None => return Err(self.fail("expected a field, found the end")),
        };
        if word == "subnet" {
            let equal = match self.next() {
                Some(Token::Eq) => true,
                Some(Token::Ne) => false,
                _ => {
                    self.at -= 1;
                    return Err(self.fail("`subnet` takes `==` or `!=`"));
                }
            };
            let text = match self.next() {
                Some(Token::Word(w)) => w,
                Some(Token::Str(s)) => String::from_utf8_lossy(&s).into_owned(),
                _ => {
                    self.at -= 1;
                    return Err(self.fail("expected a subnet such as 192.0.2.0/24"));
                }
            };
            let net: Ipv4Net = text.parse().map_err(|_| ParseError {
                column: self.tokens[self.at - 1].0,
                message: format!("{text:?} is not a subnet such as 192.0.2.0/24"),
            })?;
            if net != net.trunc() {
                return Err(ParseError {
                    column: self.tokens[self.at - 1].0,
                    message: format!("{net} has host bits set; did you mean {}?", net.trunc()),
                });
            }
            return Ok(Expr::Subnet { net, equal });
        }
        if word == "member" {
            let Some(Token::Str(name)) = self.next() else {
                self.at -= 1;
                return Err(self.fail("`member` takes a class name in quotes"));
            };
            let name = String::from_utf8_lossy(&name).into_owned();
            return match self.classes.iter().position(|c| *c == name) {
                Some(bit) => Ok(Expr::Member(u32::try_from(bit).unwrap_or(0))),
                None => Err(ParseError {
                    column: self.tokens[self.at - 1].0,
                    message: format!("no class {name:?} is defined before this one"),
                }),
            };
        }
        let field = field(&word).ok_or_else(|| ParseError {
            column,
            message: format!(
                "unknown field `{word}` (known: vendor-class, user-class, mac, client-id, \
                 hostname, circuit-id, remote-id, relay[N], subnet, member)"
            ),
        })?;
        let op = match self.next() {
            Some(Token::Word(w)) if w == "exists" => return Ok(Expr::Exists(FieldRef(field))),
            Some(Token::Eq) => Op::Eq,
            Some(Token::Ne) => Op::Ne,
            Some(Token::Word(w)) if w == "starts-with" => Op::StartsWith,
            Some(Token::Word(w)) if w == "ends-with" => Op::EndsWith,
            Some(Token::Word(w)) if w == "contains" => Op::Contains,
            _ => {
                self.at -= 1;
                return Err(self.fail(
                    "expected `==`, `!=`, `starts-with`, `ends-with`, `contains` or `exists`",
                ));
            }
        };
        let value_column = self.column();
        let value = match self.next() {
            Some(Token::Str(s)) => s,
            Some(Token::Word(w)) => hex(&w).ok_or_else(|| ParseError {
                column: value_column,
                message: format!(
                    "`{w}` is neither a quoted string nor hex bytes (0x0a0b or 0a:0b)"
                ),
            })?,
            _ => {
                self.at -= 1;
                return Err(self.fail("expected a quoted string or hex bytes"));
            }
        };
        Ok(Expr::Compare(FieldRef(field), CompareOp(op), value))
    }
}

fn field(word: &str) -> Option<Field> {
    Some(match word {
        "vendor-class" => Field::VendorClass,
        "user-class" => Field::UserClass,
        "mac" => Field::Mac,
        "client-id" => Field::ClientId,
        "hostname" => Field::Hostname,
        "circuit-id" => Field::Relay(1),
        "remote-id" => Field::Relay(2),
        _ => {
            let n = word.strip_prefix("relay[")?.strip_suffix(']')?;
            Field::Relay(n.parse().ok().filter(|n| *n > 0)?)
        }
    })
}

/// `0x0a0b` or `0a:0b:0c` (also `-` separated) as bytes.
fn hex(word: &str) -> Option<Vec<u8>> {
    let digits: String = if let Some(d) = word.strip_prefix("0x") {
        d.to_owned()
    } else if word.contains([':', '-']) {
        let parts: Vec<&str> = word.split([':', '-']).collect();
        if parts.iter().any(|p| p.len() != 2) {
            return None;
        }
        parts.concat()
    } else {
        return None;
    };
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(digits.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Compiles `text`; `earlier` are the names of the classes defined before this one (the only
/// ones `member` may name, so there are no cycles).
pub fn compile(text: &str, earlier: &[String]) -> Result<Expr, ParseError> {
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Err(ParseError {
            column: 1,
            message: "is empty".into(),
        });
    }
    let mut p = Parser {
        tokens,
        at: 0,
        end_column: text.chars().count() + 1,
        classes: earlier,
    };
    let e = p.expr(0)?;
    if let Some(t) = p.peek() {
        let t = t.clone();
        return Err(p.fail(format!("unexpected {t} (missing `and` / `or`?)")));
    }
    Ok(e)
}

/// The classes of one message, evaluated in order (a class may test membership of earlier
/// ones).
pub fn classify<'e>(exprs: impl IntoIterator<Item = &'e Expr>, facts: &Facts<'_>) -> ClassSet {
    let mut set = 0;
    for (bit, e) in exprs.into_iter().enumerate().take(MAX_CLASSES) {
        if e.matches(facts, set) {
            set |= 1 << bit;
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn facts_for(mac: &[u8], subnet: Option<(Ipv4Addr, u8)>) -> Facts<'_> {
        Facts {
            mac,
            subnet: subnet.and_then(|(a, p)| Ipv4Net::new(a, p).ok()),
            ..Facts::default()
        }
    }

    fn ok(text: &str) -> Expr {
        compile(text, &["early".to_owned()]).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> ParseError {
        compile(text, &[]).expect_err(text)
    }

    #[test]
    fn vendor_class_tests() {
        let f = Facts {
            vendor_class: Some(b"PXEClient:Arch:00007:UNDI:003016"),
            mac: &[0, 0x11, 0x22, 1, 2, 3],
            ..Facts::default()
        };
        assert!(ok(r#"vendor-class starts-with "PXEClient""#).matches(&f, 0));
        assert!(ok(r#"vendor-class contains ":Arch:00007""#).matches(&f, 0));
        assert!(ok(r#"vendor-class ends-with "003016""#).matches(&f, 0));
        assert!(!ok(r#"vendor-class == "PXEClient""#).matches(&f, 0));
        assert!(ok(r#"vendor-class != "PXEClient""#).matches(&f, 0));
        assert!(ok("vendor-class exists").matches(&f, 0));
        assert!(!ok("user-class exists").matches(&f, 0));
        // Absent is neither equal nor different.
        assert!(!ok(r#"user-class != "x""#).matches(&f, 0));
        assert!(ok(r#"not user-class == "x""#).matches(&f, 0));
    }

    #[test]
    fn mac_prefix_and_hex() {
        let f = facts_for(&[0, 0x11, 0x22, 1, 2, 3], None);
        assert!(ok("mac starts-with 00:11:22").matches(&f, 0));
        assert!(ok("mac starts-with 0x001122").matches(&f, 0));
        assert!(ok("mac == 00-11-22-01-02-03").matches(&f, 0));
        assert!(!ok("mac starts-with 00:11:23").matches(&f, 0));
    }

    #[test]
    fn user_class_instances() {
        // RFC 3004: two instances, "ab" and "voip".
        let uc = b"\x02ab\x04voip";
        let f = Facts {
            user_class: Some(uc),
            mac: &[2; 6],
            ..Facts::default()
        };
        assert!(ok(r#"user-class == "voip""#).matches(&f, 0));
        assert!(ok(r#"user-class == "ab""#).matches(&f, 0));
        assert!(!ok(r#"user-class == "a""#).matches(&f, 0));
        // A client that sends plain text (dhclient's `send user-class "x"`).
        let f = Facts {
            user_class: Some(b"iPXE"),
            ..f
        };
        assert!(ok(r#"user-class == "iPXE""#).matches(&f, 0));
    }

    #[test]
    fn relay_sub_options_subnet_and_logic() {
        // circuit-id "eth0/1", remote-id 0xaabb, sub-option 9 "x".
        let relay = b"\x01\x06eth0/1\x02\x02\xaa\xbb\x09\x01x";
        let f = Facts {
            relay: Some(relay),
            mac: &[2; 6],
            subnet: Some("192.0.2.0/24".parse().expect("net")),
            ..Facts::default()
        };
        assert!(ok(r#"circuit-id == "eth0/1""#).matches(&f, 0));
        assert!(ok("remote-id == 0xaabb").matches(&f, 0));
        assert!(ok(r#"relay[9] == "x""#).matches(&f, 0));
        assert!(ok("subnet == 192.0.2.0/24").matches(&f, 0));
        assert!(ok(r#"subnet != "198.51.100.0/24""#).matches(&f, 0));
        assert!(
            ok(r#"(circuit-id starts-with "eth1" or remote-id == 0xaabb) and not subnet == 203.0.113.0/24"#)
                .matches(&f, 0)
        );
        assert!(!ok(r#"circuit-id == "eth0/1" and relay[5] exists"#).matches(&f, 0));
        assert!(ok(r#"member "early""#).matches(&f, 1));
        assert!(!ok(r#"member "early""#).matches(&f, 0));
        assert!(ok(r#"hostname == "a\"b""#) != ok(r#"hostname == "ab""#));
    }

    #[test]
    fn classify_in_order() {
        let names = vec!["a".to_owned()];
        let exprs = [
            compile("mac starts-with 02:02", &[]).expect("a"),
            compile(r#"member "a" and mac ends-with 0x02"#, &names).expect("b"),
        ];
        assert_eq!(classify(exprs.iter(), &facts_for(&[2; 6], None)), 0b11);
        assert_eq!(classify(exprs.iter(), &facts_for(&[3; 6], None)), 0);
    }

    #[test]
    fn errors_name_the_column() {
        let e = err("vendor-klass == \"x\"");
        assert_eq!(e.column, 1);
        assert!(e.message.contains("unknown field"), "{e}");
        let e = err("mac starts-with 00:1");
        assert_eq!(e.column, 17);
        let e = err(r#"mac == 00:11 vendor-class exists"#);
        assert!(e.message.contains("missing `and`"), "{e}");
        assert_eq!(e.column, 14);
        assert!(err("(mac exists").message.contains("expected `)`"));
        assert!(err("\"open").message.contains("unterminated"));
        assert!(err("subnet == 192.0.2.1/24").message.contains("host bits"));
        assert!(err(r#"member "later""#).message.contains("before this one"));
        assert!(err("").message.contains("empty"));
        assert!(err("mac = 00:11").message.contains("followed by"));
        assert!(err("relay[0] exists").message.contains("unknown field"));
        let deep = format!("{}mac exists{}", "(".repeat(40), ")".repeat(40));
        assert!(err(&deep).message.contains("nested too deeply"));
    }
}
