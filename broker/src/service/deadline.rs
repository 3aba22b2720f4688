//! Reading the caller's deadline from the `grpc-timeout` header.

use std::time::Duration;

use tokio::time::Instant;

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// When a request's headers arrived, stamped by [`stamp_arrival`] before its body is read.
/// A caller's deadline runs from its send, so time spent receiving a large body counts.
#[derive(Debug, Clone, Copy)]
pub struct ArrivedAt(pub Instant);

/// Interceptor that stamps [`ArrivedAt`] on every request.
pub fn stamp_arrival(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.extensions_mut().insert(ArrivedAt(Instant::now()));
    Ok(request)
}

/// How long a request may wait for something (produce budget) before it must be answered:
/// `default` without a deadline, else until a quarter (at most 100 ms) before the deadline,
/// counted from the request's arrival, so the answer gets back before the caller gives up.
pub fn wait_before_deadline<T>(request: &Request<T>, default: Duration) -> Duration {
    let Some(timeout) = grpc_timeout(request.metadata()) else {
        return default;
    };
    let margin = (timeout / 4).min(Duration::from_millis(100));
    let since_arrival = request
        .extensions()
        .get::<ArrivedAt>()
        .map_or(Duration::ZERO, |a| a.0.elapsed());
    timeout.saturating_sub(margin).saturating_sub(since_arrival)
}

/// The time left until the caller's deadline, if it sent one (gRPC `grpc-timeout`:
/// an integer of at most 8 digits and a unit: H, M, S, m, u or n).
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn parses_grpc_timeouts_and_ignores_garbage() {
        let mut m = MetadataMap::new();
        assert_eq!(grpc_timeout(&m), None);
        m.insert("grpc-timeout", MetadataValue::from_static("250m"));
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(250)));
        m.insert("grpc-timeout", MetadataValue::from_static("3S"));
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(3)));
        m.insert("grpc-timeout", MetadataValue::from_static("123456789S"));
        assert_eq!(grpc_timeout(&m), None);
        m.insert("grpc-timeout", MetadataValue::from_static("x"));
        assert_eq!(grpc_timeout(&m), None);
    }

    #[test]
    fn the_wait_ends_before_the_deadline_counted_from_arrival() {
        let default = Duration::from_secs(30);
        let request = Request::new(());
        assert_eq!(wait_before_deadline(&request, default), default);
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("grpc-timeout", MetadataValue::from_static("1000m"));
        // A quarter of the deadline, at most 100 ms, is left for the answer to travel.
        let fresh = wait_before_deadline(&request, default);
        assert!(fresh <= Duration::from_millis(900) && fresh > Duration::from_millis(800));
        // A body that took 600 ms to arrive leaves 300 ms of waiting; one that took longer
        // than that, none.
        let arrived = Instant::now() - Duration::from_millis(600);
        request.extensions_mut().insert(ArrivedAt(arrived));
        let late = wait_before_deadline(&request, default);
        assert!(late <= Duration::from_millis(300) && late > Duration::from_millis(200));
        request
            .extensions_mut()
            .insert(ArrivedAt(Instant::now() - Duration::from_secs(2)));
        assert_eq!(wait_before_deadline(&request, default), Duration::ZERO);
    }
}
