//! What a panic is allowed to say. The default hook prints the panic message to stderr, and a
//! message can quote request data (a slice panic prints the string it sliced: SQL text,
//! literals included). The gateway's hook logs where the panic happened at `error` and the
//! message only at `debug`, where request data may appear. Request handlers also catch panics
//! (`api::handle`), so one bad request is answered `internal` instead of ending the connection.

use std::sync::Once;

static INSTALL: Once = Once::new();

/// Replaces the process's panic hook, once; later calls do nothing.
pub fn install_hook() {
    INSTALL.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(
                target: "sluice::panic",
                location,
                "a task panicked; it was answered `internal` if it served a request \
                 (the panic message may quote request data and is logged at debug level)"
            );
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::debug!(target: "sluice::panic", location, message);
        }));
    });
}
