//! A small SQL lexer: just enough of Postgres's lexical rules to answer, before any statement is
//! sent, the questions the gateway has to answer itself — how many statements the text holds, the
//! highest `$n` placeholder, the leading keyword, and whether the statement could leave state
//! behind in the session (so the connection needs a reset before it is reused).
//!
//! It never rewrites SQL; Postgres still parses the original text, so error positions stay
//! true. The lexer only has to avoid being fooled by quotes, dollar quotes and comments: a `;`
//! inside `'…'`, `"…"`, `$tag$…$tag$`, `E'…\'…'` or `/* … */` is not a statement boundary.

/// What the gateway learned from one SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlAnalysis {
    /// Non-empty statements in the text (`select 1;;` holds one).
    pub statements: usize,
    /// The highest `$n` placeholder referenced (0 when there is none).
    pub placeholders: usize,
    /// The first keyword of the first statement, upper-cased (`SELECT`, `WITH`, `SET`, …).
    pub leading_keyword: String,
    /// Whether running this statement may leave session state behind.
    pub session_effect: SessionEffect,
    /// A `COPY … FROM STDIN` or `COPY … TO STDOUT`: it would stream through the client's
    /// connection, which an HTTP request does not have.
    pub copies_via_client: bool,
    /// A statement that begins or ends a transaction (`BEGIN`, `COMMIT`, `ROLLBACK` but not
    /// `ROLLBACK TO SAVEPOINT`, `PREPARE TRANSACTION`, …): the gateway owns those in batches
    /// and interactive transactions.
    pub transaction_control: bool,
    /// Where each non-empty statement starts and ends in the text (without its `;`).
    pub statement_spans: Vec<std::ops::Range<usize>>,
}

/// Whether a statement can change the session beyond its own transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEffect {
    /// Plain DML or DDL calling only functions known to leave no session state.
    None,
    /// `SET`, `LISTEN`, `PREPARE`, `DECLARE`, temp tables, user-defined functions, `DO`…: the
    /// connection gets the session reset before it serves another request.
    MayChangeSession,
}

impl SqlAnalysis {
    /// Lexes `sql`. Never fails: text Postgres would reject is still analysed as far as it goes,
    /// and Postgres reports the real error.
    pub fn of(sql: &str) -> SqlAnalysis {
        Lexer::new(sql).analyse()
    }
}

/// Leading keywords whose statements cannot leave session state, unless they call a function
/// that can (checked separately).
const SESSION_SAFE_LEADING: &[&str] = &[
    "ALTER",
    "ANALYZE",
    "CHECKPOINT",
    "CLUSTER",
    "COMMENT",
    "DELETE",
    "DROP",
    "EXPLAIN",
    "GRANT",
    "INSERT",
    "MERGE",
    "NOTIFY",
    "REFRESH",
    "REINDEX",
    "REVOKE",
    "SELECT",
    "SHOW",
    "TABLE",
    "TRUNCATE",
    "UPDATE",
    "VACUUM",
    "VALUES",
    "WITH",
];

/// Words that are followed by `(` without being a function call.
const PAREN_KEYWORDS: &[&str] = &[
    "ALL",
    "AND",
    "ANY",
    "ARRAY",
    "AS",
    "BETWEEN",
    "BY",
    "CASE",
    "CAST",
    "CONFLICT",
    "CUBE",
    "DISTINCT",
    "ELSE",
    "EXCEPT",
    "EXISTS",
    "FILTER",
    "FROM",
    "GROUPING",
    "HAVING",
    "IN",
    "INTERSECT",
    "IS",
    "JOIN",
    "LATERAL",
    "LIKE",
    "NOT",
    "ON",
    "OR",
    "OVER",
    "RETURNING",
    "ROLLUP",
    "ROW",
    "SELECT",
    "SET",
    "SETS",
    "SOME",
    "THEN",
    "UNION",
    "USING",
    "VALUES",
    "WHEN",
    "WHERE",
    "WITH",
    "WITHIN",
];

/// Words after which an identifier followed by `(` names a table (and its column list).
const TABLE_CONTEXT: &[&str] = &[
    "INTO",
    "TABLE",
    "UPDATE",
    "FROM",
    "JOIN",
    "REFERENCES",
    "ONLY",
    "INDEX",
    "VIEW",
    "ON",
];

/// Built-in functions (and type names used as casts or typmods) that leave no session state.
/// Calling anything else — including every user-defined function — marks the statement
/// `MayChangeSession`, because a function body can run `SET`, create temp tables or take
/// session-level advisory locks. Sorted for binary search.
const SESSION_SAFE_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_append",
    "array_cat",
    "array_dims",
    "array_length",
    "array_lower",
    "array_position",
    "array_positions",
    "array_prepend",
    "array_remove",
    "array_replace",
    "array_to_json",
    "array_to_string",
    "array_upper",
    "ascii",
    "avg",
    "bigint",
    "bit",
    "bit_and",
    "bit_length",
    "bit_or",
    "bool",
    "bool_and",
    "bool_or",
    "boolean",
    "box",
    "bpchar",
    "btrim",
    "bytea",
    "cardinality",
    "cbrt",
    "ceil",
    "ceiling",
    "char",
    "char_length",
    "character",
    "character_length",
    "chr",
    "cidr",
    "circle",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "corr",
    "cos",
    "count",
    "covar_pop",
    "covar_samp",
    "cume_dist",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_setting",
    "currval",
    "date",
    "date_bin",
    "date_part",
    "date_trunc",
    "daterange",
    "decimal",
    "decode",
    "degrees",
    "dense_rank",
    "div",
    "double",
    "encode",
    "every",
    "exp",
    "extract",
    "factorial",
    "first_value",
    "float",
    "float4",
    "float8",
    "floor",
    "format",
    "format_type",
    "gcd",
    "gen_random_uuid",
    "generate_series",
    "generate_subscripts",
    "greatest",
    "has_column_privilege",
    "has_database_privilege",
    "has_schema_privilege",
    "has_table_privilege",
    "host",
    "inet",
    "initcap",
    "int",
    "int2",
    "int4",
    "int4range",
    "int8",
    "int8range",
    "integer",
    "interval",
    "isfinite",
    "json",
    "json_agg",
    "json_array_elements",
    "json_array_elements_text",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_each",
    "json_each_text",
    "json_extract_path",
    "json_extract_path_text",
    "json_object",
    "json_object_agg",
    "json_object_keys",
    "json_populate_record",
    "json_populate_recordset",
    "json_strip_nulls",
    "json_to_record",
    "json_to_recordset",
    "json_typeof",
    "jsonb",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_each_text",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_insert",
    "jsonb_object",
    "jsonb_object_agg",
    "jsonb_object_keys",
    "jsonb_path_exists",
    "jsonb_path_match",
    "jsonb_path_query",
    "jsonb_path_query_array",
    "jsonb_path_query_first",
    "jsonb_populate_record",
    "jsonb_populate_recordset",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_set_lax",
    "jsonb_strip_nulls",
    "jsonb_to_record",
    "jsonb_to_recordset",
    "jsonb_typeof",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "lag",
    "last_value",
    "lcm",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "log",
    "log10",
    "lower",
    "lower_inc",
    "lower_inf",
    "lpad",
    "lseg",
    "ltrim",
    "make_date",
    "make_interval",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "masklen",
    "max",
    "md5",
    "min",
    "mod",
    "mode",
    "money",
    "netmask",
    "network",
    "nextval",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "num_nonnulls",
    "num_nulls",
    "numeric",
    "numrange",
    "octet_length",
    "overlay",
    "path",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_backend_pid",
    "pg_column_size",
    "pg_current_xact_id",
    "pg_database_size",
    "pg_relation_size",
    "pg_size_pretty",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_total_relation_size",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_typeof",
    "phraseto_tsquery",
    "pi",
    "plainto_tsquery",
    "point",
    "polygon",
    "position",
    "power",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "radians",
    "random",
    "range_agg",
    "rank",
    "real",
    "regexp_count",
    "regexp_instr",
    "regexp_like",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "regexp_substr",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "scale",
    "setweight",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "sign",
    "sin",
    "smallint",
    "split_part",
    "sqrt",
    "starts_with",
    "statement_timestamp",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "string_agg",
    "string_to_array",
    "string_to_table",
    "strpos",
    "substr",
    "substring",
    "sum",
    "tan",
    "text",
    "time",
    "timeofday",
    "timestamp",
    "timestamptz",
    "to_char",
    "to_date",
    "to_hex",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "to_tsquery",
    "to_tsvector",
    "transaction_timestamp",
    "translate",
    "trim",
    "trunc",
    "ts_headline",
    "ts_rank",
    "ts_rank_cd",
    "tsrange",
    "tstzrange",
    "txid_current",
    "unnest",
    "upper",
    "upper_inc",
    "upper_inf",
    "uuid",
    "var_pop",
    "var_samp",
    "varbit",
    "varchar",
    "variance",
    "version",
    "websearch_to_tsquery",
    "width_bucket",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    /// An unquoted identifier or keyword, as written.
    Word(&'a str),
    /// A double-quoted identifier (content without the quotes, `""` not unescaped).
    QuotedIdent(&'a str),
    /// `$n`.
    Placeholder(usize),
    Semicolon,
    OpenParen,
    CloseParen,
    Dot,
    /// A string or numeric literal, an operator, or other punctuation.
    Other,
}

struct Lexer<'a> {
    sql: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// Where the token last returned by `next_token` starts.
    token_start: usize,
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str) -> Self {
        Lexer {
            sql,
            bytes: sql.as_bytes(),
            pos: 0,
            token_start: 0,
        }
    }

    fn analyse(mut self) -> SqlAnalysis {
        let mut statements = 0;
        let mut placeholders = 0;
        let mut leading_keyword = String::new();
        let mut effect = SessionEffect::None;
        let mut copies_via_client = false;
        let mut transaction_control = false;
        let mut statement_spans = Vec::new();

        // Per-statement state.
        let mut tokens_in_statement = 0usize;
        let mut statement_leading = String::new();
        let mut span = 0..0;
        // `BEGIN ATOMIC … END` bodies of SQL-standard functions contain `;`.
        let mut atomic_depth = 0usize;
        // The last few tokens, to decide whether `word (` is a function call.
        let mut previous: [Option<Token<'a>>; 4] = [None, None, None, None];

        while let Some(token) = self.next_token() {
            match &token {
                Token::Semicolon if atomic_depth == 0 => {
                    if tokens_in_statement > 0 {
                        statements += 1;
                        statement_spans.push(span.clone());
                    }
                    tokens_in_statement = 0;
                    statement_leading.clear();
                    previous = [None, None, None, None];
                    continue;
                }
                Token::Placeholder(n) => placeholders = placeholders.max(*n),
                Token::Word(word) => {
                    if tokens_in_statement == 1 {
                        transaction_control |= ends_or_begins_transaction(&statement_leading, word);
                    }
                    if tokens_in_statement == 0 {
                        statement_leading = word.to_ascii_uppercase();
                        transaction_control |= matches!(
                            statement_leading.as_str(),
                            "BEGIN" | "START" | "COMMIT" | "END" | "ABORT"
                        );
                        if statements == 0 {
                            leading_keyword.clone_from(&statement_leading);
                        }
                        if !SESSION_SAFE_LEADING.contains(&statement_leading.as_str()) {
                            effect = SessionEffect::MayChangeSession;
                        }
                    }
                    if statement_leading == "CREATE" {
                        let begins_atomic = word.eq_ignore_ascii_case("ATOMIC")
                            && matches!(previous[3], Some(Token::Word(w)) if w.eq_ignore_ascii_case("BEGIN"));
                        let opens_case = atomic_depth > 0 && word.eq_ignore_ascii_case("CASE");
                        if begins_atomic || opens_case {
                            atomic_depth += 1;
                        } else if atomic_depth > 0 && word.eq_ignore_ascii_case("END") {
                            atomic_depth -= 1;
                        }
                    }
                    if statement_leading == "COPY"
                        && (word.eq_ignore_ascii_case("STDIN")
                            || word.eq_ignore_ascii_case("STDOUT"))
                    {
                        copies_via_client = true;
                    }
                    // `SELECT … INTO new_table` creates a table (possibly a temporary one).
                    if word.eq_ignore_ascii_case("INTO")
                        && matches!(statement_leading.as_str(), "SELECT" | "WITH")
                    {
                        effect = SessionEffect::MayChangeSession;
                    }
                }
                Token::OpenParen if calls_unsafe_function(&previous) => {
                    effect = SessionEffect::MayChangeSession;
                }
                _ => {}
            }
            if tokens_in_statement == 0 {
                span.start = self.token_start;
            }
            span.end = self.pos.min(self.bytes.len());
            tokens_in_statement += 1;
            previous.rotate_left(1);
            previous[3] = Some(token);
        }
        if tokens_in_statement > 0 {
            statements += 1;
            // A lone `ROLLBACK` (no second word) is transaction control too.
            transaction_control |= tokens_in_statement == 1 && statement_leading == "ROLLBACK";
            statement_spans.push(span);
        }
        SqlAnalysis {
            statements,
            placeholders,
            leading_keyword,
            session_effect: effect,
            copies_via_client,
            transaction_control,
            statement_spans,
        }
    }

    fn peek(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.pos + offset).copied()
    }

    fn next_token(&mut self) -> Option<Token<'a>> {
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
                Token::OpenParen
            }
            b')' => {
                self.pos += 1;
                Token::CloseParen
            }
            b'.' if !self.peek(1).is_some_and(|d| d.is_ascii_digit()) => {
                self.pos += 1;
                Token::Dot
            }
            b'\'' => {
                self.skip_quoted(b'\'', false);
                Token::Other
            }
            b'"' => {
                let start = self.pos + 1;
                self.skip_quoted(b'"', false);
                let end = self.pos.saturating_sub(1).max(start);
                Token::QuotedIdent(&self.sql[start..end])
            }
            b'$' => self.dollar(),
            b'0'..=b'9' | b'.' => {
                self.skip_number();
                Token::Other
            }
            c if is_ident_start(c) => {
                // E'…' (escapes), B'…', X'…', N'…' and U&'…' string constants.
                let next = self.peek(1);
                if next == Some(b'\'') && matches!(c, b'e' | b'E') {
                    self.pos += 1;
                    self.skip_quoted(b'\'', true);
                    Token::Other
                } else if next == Some(b'\'')
                    && matches!(c, b'b' | b'B' | b'x' | b'X' | b'n' | b'N')
                {
                    self.pos += 1;
                    self.skip_quoted(b'\'', false);
                    Token::Other
                } else if matches!(c, b'u' | b'U')
                    && next == Some(b'&')
                    && matches!(self.peek(2), Some(b'\'' | b'"'))
                {
                    self.pos += 2;
                    let quote = self.peek(0).unwrap_or(b'\'');
                    self.skip_quoted(quote, false);
                    Token::Other
                } else {
                    let start = self.pos;
                    while self.peek(0).is_some_and(is_ident_continue) {
                        self.pos += 1;
                    }
                    Token::Word(&self.sql[start..self.pos])
                }
            }
            _ => {
                // Operators and other punctuation; step over one whole UTF-8 character.
                self.pos += utf8_width(c);
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

    /// Block comments nest in Postgres.
    fn skip_block_comment(&mut self) {
        self.pos += 2;
        let mut depth = 1;
        while depth > 0 {
            match (self.peek(0), self.peek(1)) {
                (None, _) => return,
                (Some(b'/'), Some(b'*')) => {
                    depth += 1;
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

    /// Steps over a quoted run starting at the opening quote. A doubled quote is an escaped
    /// quote; with `backslash_escapes` (E'…'), `\` escapes the next byte too.
    fn skip_quoted(&mut self, quote: u8, backslash_escapes: bool) {
        self.pos += 1;
        while let Some(c) = self.peek(0) {
            self.pos += 1;
            if backslash_escapes && c == b'\\' {
                self.pos += 1;
            } else if c == quote {
                if self.peek(0) == Some(quote) {
                    self.pos += 1;
                } else {
                    return;
                }
            }
        }
        self.pos = self.pos.min(self.bytes.len());
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
        Token::Other
    }
}

/// The second word of a statement led by `leading`: `ROLLBACK` ends a transaction unless it
/// goes `TO` a savepoint; `PREPARE TRANSACTION`, `COMMIT PREPARED` and `ROLLBACK PREPARED`
/// are two-phase commit.
fn ends_or_begins_transaction(leading: &str, second: &str) -> bool {
    match leading {
        "ROLLBACK" => !second.eq_ignore_ascii_case("TO"),
        "PREPARE" => second.eq_ignore_ascii_case("TRANSACTION"),
        _ => false,
    }
}

/// Whether the tokens before a `(` name a function that is not known to be session-safe.
/// `previous[3]` is the token right before the parenthesis.
fn calls_unsafe_function(previous: &[Option<Token<'_>>; 4]) -> bool {
    let (name, quoted) = match &previous[3] {
        Some(Token::Word(word)) => (*word, false),
        Some(Token::QuotedIdent(ident)) => (*ident, true),
        _ => return false,
    };
    let qualifier = match (&previous[1], &previous[2]) {
        (Some(Token::Word(schema) | Token::QuotedIdent(schema)), Some(Token::Dot)) => Some(*schema),
        _ => None,
    };
    // The token before the (possibly qualified) name: `INSERT INTO s.t (…)`, `JOIN t (…)`.
    let context = if qualifier.is_some() {
        &previous[0]
    } else {
        &previous[2]
    };
    if let Some(Token::Word(word)) = context
        && TABLE_CONTEXT.iter().any(|k| word.eq_ignore_ascii_case(k))
    {
        return false;
    }
    match qualifier {
        // Only pg_catalog's functions are known; any other schema holds user code.
        Some(schema) if !schema.eq_ignore_ascii_case("pg_catalog") => return true,
        Some(_) => {}
        None if !quoted && PAREN_KEYWORDS.iter().any(|k| name.eq_ignore_ascii_case(k)) => {
            return false;
        }
        None => {}
    }
    let lower = if quoted {
        name.to_owned()
    } else {
        name.to_ascii_lowercase()
    };
    SESSION_SAFE_FUNCTIONS
        .binary_search(&lower.as_str())
        .is_err()
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_continue(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn utf8_width(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyse(sql: &str) -> SqlAnalysis {
        SqlAnalysis::of(sql)
    }

    #[test]
    fn safe_function_list_is_sorted() {
        assert!(SESSION_SAFE_FUNCTIONS.windows(2).all(|w| w[0] < w[1]));
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
    fn classifies_session_effects() {
        use SessionEffect::*;
        let cases = [
            ("select * from users where id = $1", None),
            ("SELECT count(*), max(id) FROM t", None),
            (
                "insert into users (id, name) values ($1, $2) returning id",
                None,
            ),
            ("insert into public.users (id) values (1)", None),
            (
                "update t set (a, b) = (1, 2) where id in (select id from u)",
                None,
            ),
            ("select pg_sleep(0.1)", None),
            ("select now(), lower(name) from t join u using (id)", None),
            ("with x as (select 1) select * from x", None),
            (
                "select row_number() over (partition by a order by b) from t",
                None,
            ),
            ("select numeric(10,2) '1.5', $1::varchar(20)", None),
            ("delete from t where exists (select 1 from u)", None),
            ("set statement_timeout = 0", MayChangeSession),
            ("SET LOCAL x = 1", MayChangeSession),
            ("listen foo", MayChangeSession),
            ("prepare p as select 1", MayChangeSession),
            ("declare c cursor with hold for select 1", MayChangeSession),
            ("create temp table t (a int)", MayChangeSession),
            ("select 1 into temp t", MayChangeSession),
            ("select set_config('a.b', 'c', false)", MayChangeSession),
            ("select pg_advisory_lock(1)", MayChangeSession),
            ("select pg_advisory_xact_lock(1)", None),
            ("select my_function($1)", MayChangeSession),
            ("select public.my_function($1)", MayChangeSession),
            ("select pg_catalog.now()", None),
            ("do $$ begin perform 1; end $$", MayChangeSession),
            ("call proc()", MayChangeSession),
            ("begin", MayChangeSession),
            ("discard all", MayChangeSession),
            ("select \"Weird\"(1)", MayChangeSession),
        ];
        for (sql, expected) in cases {
            assert_eq!(analyse(sql).session_effect, expected, "{sql}");
        }
    }

    #[test]
    fn spots_copy_through_the_client() {
        assert!(analyse("COPY t FROM STDIN").copies_via_client);
        assert!(analyse("copy (select 1) to stdout with csv").copies_via_client);
        assert!(!analyse("copy t from '/tmp/file'").copies_via_client);
        assert!(!analyse("select 'copy from stdin'").copies_via_client);
    }

    #[test]
    fn finds_transaction_control() {
        for sql in [
            "begin",
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "start transaction",
            "commit",
            "end",
            "rollback",
            "ROLLBACK AND CHAIN",
            "abort",
            "prepare transaction 'x'",
            "select 1; commit",
        ] {
            assert!(analyse(sql).transaction_control, "{sql}");
        }
        for sql in [
            "rollback to savepoint s",
            "ROLLBACK TO s",
            "savepoint s",
            "release savepoint s",
            "select 'begin'",
            "prepare p as select 1",
            "create function f() returns int begin atomic select 1; end",
        ] {
            assert!(!analyse(sql).transaction_control, "{sql}");
        }
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
        ] {
            let analysis = analyse(sql);
            assert_eq!(analysis.statements, 1, "{sql}");
        }
    }
}
