//! Minimal levelled logging to stderr. The level is set once at start-up; a disabled message
//! costs one relaxed load of a value no thread writes after start-up.

use crate::config::LogLevel;
use std::sync::atomic::{AtomicU8, Ordering};

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: LogLevel) -> bool {
    level as u8 >= LEVEL.load(Ordering::Relaxed)
}

#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        if $crate::log::enabled($crate::config::LogLevel::$level) {
            eprintln!("seqcore [{}] {}", stringify!($level), format_args!($($arg)*));
        }
    };
}
