//! Postgres's lexical rules, as far as the gateway needs them: whitespace, comments (nested,
//! counted rather than recursed into), quoted strings and identifiers, dollar quotes, `$n`
//! placeholders, numbers and words. It yields tokens; what they mean is `classify`'s job.

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Token<'a> {
    /// An unquoted identifier or keyword, as written.
    Word(&'a str),
    /// A double-quoted identifier (content without the quotes, `""` not unescaped).
    QuotedIdent(&'a str),
    /// A `U&"…"` identifier: its escapes can spell any name, so the gateway never trusts it.
    UnicodeIdent,
    /// `$n`.
    Placeholder(usize),
    Semicolon,
    OpenParen,
    CloseParen,
    Dot,
    /// A string or numeric constant.
    Literal,
    /// An operator or other punctuation.
    Other,
}

pub(super) struct Lexer<'a> {
    pub(super) sql: &'a str,
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
    /// Where the token last returned by `next_token` starts.
    pub(super) token_start: usize,
    pub(super) comment_depth: usize,
    pub(super) paren_depth: usize,
    pub(super) max_paren_depth: usize,
}

impl<'a> Lexer<'a> {
    pub(super) fn new(sql: &'a str) -> Self {
        Lexer {
            sql,
            bytes: sql.as_bytes(),
            pos: 0,
            token_start: 0,
            comment_depth: 0,
            paren_depth: 0,
            max_paren_depth: 0,
        }
    }

    fn peek(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.pos + offset).copied()
    }

    pub(super) fn next_token(&mut self) -> Option<Token<'a>> {
        loop {
            let c = self.peek(0)?;
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => self.pos += 1,
                b'-' if self.peek(1) == Some(b'-') => self.skip_line_comment(),
                b'/' if self.peek(1) == Some(b'*') => self.skip_block_comment(),
                _ => break,
            }
        }
        self.token_start = self.pos;
        let c = self.peek(0)?;
        let token = match c {
            b';' => {
                self.pos += 1;
                Token::Semicolon
            }
            b'(' => {
                self.pos += 1;
                self.paren_depth += 1;
                self.max_paren_depth = self.max_paren_depth.max(self.paren_depth);
                Token::OpenParen
            }
            b')' => {
                self.pos += 1;
                self.paren_depth = self.paren_depth.saturating_sub(1);
                Token::CloseParen
            }
            b'.' if !self.peek(1).is_some_and(|d| d.is_ascii_digit()) => {
                self.pos += 1;
                Token::Dot
            }
            b'\'' => {
                self.skip_quoted(b'\'', false);
                Token::Literal
            }
            b'"' => {
                let start = self.pos + 1;
                // The content ends before the closing quote, or at the end of an unterminated
                // identifier: both are character boundaries.
                let end = if self.skip_quoted(b'"', false) {
                    self.pos - 1
                } else {
                    self.bytes.len()
                };
                Token::QuotedIdent(self.sql.get(start..end).unwrap_or_default())
            }
            b'$' => self.dollar(),
            b'0'..=b'9' | b'.' => {
                self.skip_number();
                Token::Literal
            }
            c if is_ident_start(c) => {
                // E'…' (escapes), B'…', X'…', N'…' and U&'…' string constants; U&"…" identifiers.
                let next = self.peek(1);
                if next == Some(b'\'') && matches!(c, b'e' | b'E') {
                    self.pos += 1;
                    self.skip_quoted(b'\'', true);
                    Token::Literal
                } else if next == Some(b'\'')
                    && matches!(c, b'b' | b'B' | b'x' | b'X' | b'n' | b'N')
                {
                    self.pos += 1;
                    self.skip_quoted(b'\'', false);
                    Token::Literal
                } else if matches!(c, b'u' | b'U')
                    && next == Some(b'&')
                    && self.peek(2) == Some(b'\'')
                {
                    self.pos += 2;
                    self.skip_quoted(b'\'', false);
                    Token::Literal
                } else if matches!(c, b'u' | b'U')
                    && next == Some(b'&')
                    && self.peek(2) == Some(b'"')
                {
                    self.pos += 2;
                    self.skip_quoted(b'"', false);
                    Token::UnicodeIdent
                } else {
                    let start = self.pos;
                    while self.peek(0).is_some_and(is_ident_continue) {
                        self.pos += 1;
                    }
                    // Identifier bytes include every byte of a multi-byte character, so the
                    // word ends on a character boundary.
                    Token::Word(self.sql.get(start..self.pos).unwrap_or_default())
                }
            }
            _ => {
                // Operators and other punctuation: ASCII here (bytes from 0x80 start words),
                // but step over a whole character whatever it is.
                self.pos += self.sql[self.pos..]
                    .chars()
                    .next()
                    .map_or(1, char::len_utf8);
                Token::Other
            }
        };
        Some(token)
    }

    fn skip_line_comment(&mut self) {
        while let Some(c) = self.peek(0) {
            self.pos += 1;
            if c == b'\n' || c == b'\r' {
                break;
            }
        }
    }

    /// Block comments nest in Postgres; the depth is counted (and its maximum kept), never
    /// recursed into.
    fn skip_block_comment(&mut self) {
        self.pos += 2;
        let mut depth = 1;
        self.comment_depth = self.comment_depth.max(depth);
        while depth > 0 {
            match (self.peek(0), self.peek(1)) {
                (None, _) => {
                    self.pos = self.bytes.len();
                    return;
                }
                (Some(b'/'), Some(b'*')) => {
                    depth += 1;
                    self.comment_depth = self.comment_depth.max(depth);
                    self.pos += 2;
                }
                (Some(b'*'), Some(b'/')) => {
                    depth -= 1;
                    self.pos += 2;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Steps over a quoted run starting at the opening quote; true when the closing quote was
    /// found (`pos` is then just after it), false at the end of the text (`pos` is the end).
    /// A doubled quote is an escaped quote; with `backslash_escapes` (E'…'), `\` escapes the
    /// next byte too. Positions inside may fall within a character, but only ASCII bytes are
    /// compared, and the run ends after an ASCII quote or at the end.
    fn skip_quoted(&mut self, quote: u8, backslash_escapes: bool) -> bool {
        self.pos += 1;
        while let Some(c) = self.peek(0) {
            self.pos += 1;
            if backslash_escapes && c == b'\\' {
                self.pos += 1;
            } else if c == quote {
                if self.peek(0) == Some(quote) {
                    self.pos += 1;
                } else {
                    return true;
                }
            }
        }
        self.pos = self.bytes.len();
        false
    }

    fn skip_number(&mut self) {
        while let Some(c) = self.peek(0) {
            let exponent_sign = matches!(c, b'+' | b'-')
                && matches!(self.bytes.get(self.pos.wrapping_sub(1)), Some(b'e' | b'E'));
            if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || exponent_sign {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// `$n` placeholder, `$tag$…$tag$` / `$$…$$` dollar quote, or a lone `$`.
    fn dollar(&mut self) -> Token<'a> {
        let start = self.pos;
        if self.peek(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            let digits_start = self.pos;
            while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
            let n = self.sql[digits_start..self.pos]
                .parse()
                .unwrap_or(usize::MAX);
            return Token::Placeholder(n);
        }
        // A dollar-quote tag: `$` identifier-without-`$` `$`, or `$$`.
        let mut end = self.pos + 1;
        if self.bytes.get(end).is_some_and(|&c| is_ident_start(c)) {
            while self
                .bytes
                .get(end)
                .is_some_and(|&c| is_ident_continue(c) && c != b'$')
            {
                end += 1;
            }
        }
        if self.bytes.get(end) != Some(&b'$') {
            self.pos += 1;
            return Token::Other;
        }
        let tag = &self.bytes[start..=end];
        self.pos = end + 1;
        match find(&self.bytes[self.pos..], tag) {
            Some(offset) => self.pos += offset + tag.len(),
            None => self.pos = self.bytes.len(),
        }
        Token::Literal
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_continue(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use crate::pg::sql::SqlAnalysis;

    fn analyse(sql: &str) -> SqlAnalysis {
        SqlAnalysis::of(sql)
    }

    #[test]
    fn counts_statements_outside_quotes_and_comments() {
        assert_eq!(analyse("select 1").statements, 1);
        assert_eq!(analyse("select 1;").statements, 1);
        assert_eq!(analyse("select 1;;  ; ").statements, 1);
        assert_eq!(analyse("select 1; select 2").statements, 2);
        assert_eq!(analyse("select ';'").statements, 1);
        assert_eq!(analyse("select \"a;b\" from t").statements, 1);
        assert_eq!(analyse("select E'it\\'s; fine'").statements, 1);
        assert_eq!(analyse("select 'it''s; fine'").statements, 1);
        assert_eq!(analyse("select $$ ; $$").statements, 1);
        assert_eq!(analyse("select $fn$ ; $x$ ; $fn$").statements, 1);
        assert_eq!(analyse("select 1 -- ; comment\n").statements, 1);
        assert_eq!(analyse("select /* ; /* nested ; */ ; */ 1").statements, 1);
        assert_eq!(analyse("").statements, 0);
        assert_eq!(analyse("  -- only a comment").statements, 0);
        assert_eq!(analyse(";").statements, 0);
        assert_eq!(analyse("select U&'d\\0061t;a'").statements, 1);
    }

    #[test]
    fn standard_strings_do_not_treat_backslash_as_escape() {
        // With standard_conforming_strings (the default), 'a\' is a complete literal.
        assert_eq!(analyse("select 'a\\'; select 2").statements, 2);
    }

    #[test]
    fn begin_atomic_bodies_are_one_statement() {
        let sql = "create function f() returns int language sql begin atomic select 1; \
                   select case when true then 2 end; end";
        assert_eq!(analyse(sql).statements, 1);
        assert_eq!(analyse("begin; select 1").statements, 2);
    }

    #[test]
    fn finds_the_highest_placeholder() {
        assert_eq!(analyse("select $1, $3").placeholders, 3);
        assert_eq!(analyse("select '$4', $2").placeholders, 2);
        assert_eq!(analyse("select $$ $9 $$, $1").placeholders, 1);
        assert_eq!(analyse("select a$1 from t").placeholders, 0);
        assert_eq!(analyse("select 1").placeholders, 0);
    }

    #[test]
    fn splits_statements_at_their_boundaries() {
        let sql =
            "create table t (a text);\n insert into t values (';') ; ;\n-- done\nselect $$;$$";
        let spans = analyse(sql).statement_spans;
        let parts: Vec<&str> = spans.iter().map(|r| &sql[r.clone()]).collect();
        assert_eq!(
            parts,
            [
                "create table t (a text)",
                "insert into t values (';')",
                "select $$;$$"
            ]
        );
    }

    #[test]
    fn reports_the_leading_keyword() {
        assert_eq!(analyse("  /* hi */ select 1").leading_keyword, "SELECT");
        assert_eq!(
            analyse("With x as (select 1) table x").leading_keyword,
            "WITH"
        );
        assert_eq!(analyse("(select 1)").leading_keyword, "");
    }

    #[test]
    fn survives_unterminated_input() {
        for sql in [
            "select 'abc",
            "select \"abc",
            "select $$abc",
            "select /* abc",
            "select E'\\",
            // Issue 11: an unterminated quoted identifier ending in a multi-byte character
            // was sliced inside that character.
            "select \"é",
            "select U&\"é",
            "select E'\\é",
            "select $é$é",
            "select /* é",
        ] {
            let analysis = analyse(sql);
            assert_eq!(analysis.statements, 1, "{sql}");
            check_invariants(sql, &analysis);
        }
    }

    #[test]
    fn measures_nesting() {
        let a = analyse("select /* a /* b /* c */ */ */ ((1)), (2)");
        assert_eq!((a.comment_depth, a.paren_depth), (3, 2));
        let a = analyse("select '((((', \"(((\", $$((($$ -- ((((\n");
        assert_eq!((a.comment_depth, a.paren_depth), (0, 0));
        let deep = format!("select {}1{}", "(".repeat(5000), ")".repeat(5000));
        assert_eq!(analyse(&deep).paren_depth, 5000);
        let deep = format!("select 1 {}{}", "/*".repeat(100_000), "*/".repeat(100_000));
        assert_eq!(analyse(&deep).comment_depth, 100_000);
    }

    /// What every analysis must satisfy, whatever the text.
    fn check_invariants(sql: &str, analysis: &SqlAnalysis) {
        assert_eq!(
            analysis.statements,
            analysis.statement_spans.len(),
            "{sql:?}"
        );
        let mut last_end = 0;
        for span in &analysis.statement_spans {
            assert!(
                span.start <= span.end && span.end <= sql.len(),
                "{sql:?}: {span:?}"
            );
            assert!(span.start >= last_end, "{sql:?}: spans overlap");
            assert!(
                sql.is_char_boundary(span.start) && sql.is_char_boundary(span.end),
                "{sql:?}: {span:?} cuts a character"
            );
            // Postgres's whitespace is ASCII only (U+00A0 is an identifier character).
            let text = sql[span.clone()].trim_matches([' ', '\t', '\n', '\r', '\x0c']);
            assert!(!text.is_empty(), "{sql:?}: empty statement");
            last_end = span.end;
        }
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        /// SQL the tests above use, and fragments that open or close the lexer's states.
        const CORPUS: &[&str] = &[
            "select * from users where id = $1",
            "insert into t (a, b) values ($1, 'x''y') returning id",
            "select E'it\\'s; fine', U&'d\\0061t', U&\"col\", $tag$ ; $tag$ from t",
            "create function f() returns int language sql begin atomic select 1; end",
            "select /* a /* b */ c */ 1 -- comment\n; select 2",
            "with x as (select 1) select * from x; set search_path = 'é'",
            "select \"Weird\"(1), pg_catalog.now(), count(*) over (partition by a)",
            "copy (select 1) to stdout; prepare p as select 1; deallocate all",
        ];
        const FRAGMENTS: &[&str] = &[
            "'",
            "\"",
            "$$",
            "$a$",
            "$1",
            "$99999999999999999999999",
            "/*",
            "*/",
            "--",
            "\n",
            ";",
            "(",
            ")",
            ".",
            "E'",
            "U&\"",
            "U&'",
            "\\",
            "é",
            "あ",
            "😀",
            "\u{0}",
            " ",
            "e+",
            "1.5e",
            "begin atomic",
            "end",
            "case",
            "set_config(",
            "from",
            "execute sluice_1",
        ];

        fn mutated() -> impl Strategy<Value = String> {
            let edit = (any::<prop::sample::Index>(), 0..FRAGMENTS.len(), 0..4u8);
            (
                0..CORPUS.len(),
                prop::collection::vec(edit, 0..8),
                any::<prop::sample::Index>(),
            )
                .prop_map(|(seed, edits, cut)| {
                    let mut chars: Vec<char> = CORPUS[seed].chars().collect();
                    for (at, fragment, op) in edits {
                        let at = at.index(chars.len() + 1);
                        match op {
                            0 => {
                                chars.splice(at..at, FRAGMENTS[fragment].chars());
                            }
                            1 if at < chars.len() => {
                                chars.remove(at);
                            }
                            _ => {
                                chars.truncate(at.max(1));
                            }
                        }
                    }
                    let end = cut.index(chars.len() + 1).max(chars.len() / 2);
                    chars[..end].iter().collect()
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            #[test]
            fn any_text_is_analysed_without_panic(sql in any::<String>()) {
                check_invariants(&sql, &SqlAnalysis::of(&sql));
            }

            #[test]
            fn sql_like_text_is_analysed_without_panic(
                sql in "([a-zA-Z_ ;().,$'\"\\/*&+\n-]|é|あ|😀|\u{0}|[0-9]){0,80}"
            ) {
                check_invariants(&sql, &SqlAnalysis::of(&sql));
            }

            #[test]
            fn mutated_sql_is_analysed_without_panic(sql in mutated()) {
                check_invariants(&sql, &SqlAnalysis::of(&sql));
            }
        }
    }
}
