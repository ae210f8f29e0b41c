//! A bounded memo of [`SqlAnalysis::of`]. An application sends the same few dozen statement
//! texts request after request, and lexing one again each time was about 2,500 of a warm
//! request's ~50,000 user-space instructions (callgrind, issue 17).
//!
//! The analysis is a pure function of the text, so a hit can never differ from lexing it again.
//! The memo is bounded in entries and in bytes of text; when a new text would go past either,
//! it is emptied and starts again, so a client sending endless distinct texts costs a lexing
//! each (as without the memo) and no memory. Texts are hashed with std's keyed SipHash, so a
//! client cannot pick texts that collide.
//!
//! One memo per thread: a shared one was a lock and a reference count that every worker
//! thread's requests wrote, cache lines moved between cores on each request. Each worker
//! learns an application's few dozen texts once; the bounds below are per thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use super::SqlAnalysis;

/// Longer texts are lexed every time: they are rare, and each would take a large share of
/// [`MAX_TEXT_BYTES`].
const MAX_CACHED_TEXT: usize = 4 * 1024;
const MAX_ENTRIES: usize = 512;
const MAX_TEXT_BYTES: usize = 256 * 1024;

#[derive(Default)]
struct Memo {
    entries: HashMap<Box<str>, Arc<SqlAnalysis>>,
    text_bytes: usize,
}

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::default();
}

/// [`SqlAnalysis::of`] `sql`, from this thread's memo when it analysed the same text before.
pub fn analysis_of(sql: &str) -> Arc<SqlAnalysis> {
    if sql.len() > MAX_CACHED_TEXT {
        return Arc::new(SqlAnalysis::of(sql));
    }
    MEMO.with(|memo| {
        // Never re-entered (lexing calls nothing that analyses); if it were, that call lexes.
        let Ok(mut memo) = memo.try_borrow_mut() else {
            return Arc::new(SqlAnalysis::of(sql));
        };
        if let Some(hit) = memo.entries.get(sql) {
            return hit.clone();
        }
        let analysis = Arc::new(SqlAnalysis::of(sql));
        if memo.entries.len() >= MAX_ENTRIES || memo.text_bytes + sql.len() > MAX_TEXT_BYTES {
            *memo = Memo::default();
        }
        if memo.entries.insert(sql.into(), analysis.clone()).is_none() {
            memo.text_bytes += sql.len();
        }
        analysis
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_analysis_is_the_one_lexing_gives() {
        for sql in [
            "select $1::int",
            "set search_path = x",
            "begin; select 1; commit",
            "",
        ] {
            assert_eq!(*analysis_of(sql), SqlAnalysis::of(sql));
            assert_eq!(
                *analysis_of(sql),
                SqlAnalysis::of(sql),
                "second look-up: {sql}"
            );
        }
        let long = format!("select '{}'", "x".repeat(MAX_CACHED_TEXT));
        assert_eq!(*analysis_of(&long), SqlAnalysis::of(&long));
    }

    #[test]
    fn endless_distinct_texts_keep_the_memo_within_its_bounds() {
        for n in 0..3 * MAX_ENTRIES {
            let sql = format!("select {n} /* {} */", "y".repeat(n % 3000));
            assert_eq!(*analysis_of(&sql), SqlAnalysis::of(&sql));
            MEMO.with_borrow(|memo| {
                assert!(memo.entries.len() <= MAX_ENTRIES);
                assert!(memo.text_bytes <= MAX_TEXT_BYTES);
                assert_eq!(
                    memo.text_bytes,
                    memo.entries.keys().map(|k| k.len()).sum::<usize>()
                );
            });
        }
    }
}
