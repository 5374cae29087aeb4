//! The breaker's reading of Redis errors.

use super::call::about_own_keys;
use super::*;
use redis::{ErrorKind, ServerErrorKind};

fn script_error(detail: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Server(ServerErrorKind::ResponseError),
        "An error was signalled by the server",
        detail.to_owned(),
    ))
}

#[test]
fn a_script_error_is_about_the_keys_unless_it_names_redis_failing() {
    // A counter edited by hand into text (Redis 7's wording).
    assert!(about_own_keys(&script_error(
        "user_script:12: attempt to perform arithmetic on a nil value (local 'u') script: abc, on @user_script:12."
    )));
    // Redis 6 wraps what `redis.call` met inside the script: the server, not the keys.
    for condition in [
        "Error running script (call to f_abc): @user_script:1: OOM command not allowed when used memory > 'maxmemory'.",
        "Error running script (call to f_abc): @user_script:1: READONLY You can't write against a read only replica.",
    ] {
        assert!(!about_own_keys(&script_error(condition)), "{condition}");
    }
    assert!(!about_own_keys(&RedisError::from((
        ErrorKind::Io,
        "connection reset"
    ))));
}
