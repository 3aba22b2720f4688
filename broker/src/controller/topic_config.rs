//! Topic configs: Kafka's keys, validated, with broker defaults, mapped to `LogConfig`.

use std::collections::BTreeMap;

use sluice_storage::{CleanupPolicy, LogConfig};

/// Largest batch a topic accepts by default (Kafka's `max.message.bytes`, 1 MiB).
pub const MAX_MESSAGE_BYTES_DEFAULT: u64 = 1024 * 1024;
/// Hard ceiling for `max.message.bytes`: the storage format's records limit.
pub const MAX_MESSAGE_BYTES_LIMIT: u64 = sluice_storage::limits::RECORDS_BYTES_MAX as u64;

/// How long an idle idempotent producer is remembered by default (Kafka's
/// `producer.id.expiration.ms`, 1 day).
pub const PRODUCER_ID_EXPIRATION_MS_DEFAULT: i64 = 24 * 60 * 60 * 1000;

/// A topic's effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    /// The storage side.
    pub log: LogConfig,
    /// Largest encoded batch accepted from producers.
    pub max_message_bytes: u64,
    /// An idempotent producer whose newest batch is older than this is forgotten.
    pub producer_id_expiration_ms: i64,
}

use crate::error::quote;

/// A config key or value that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicConfigError {
    /// The key is not a topic config.
    #[error("unknown topic config {}", quote(.0))]
    UnknownKey(String),
    /// The value does not parse or is out of range.
    #[error("invalid value {} for {}: {}", quote(.value), quote(.key), quote(.why))]
    InvalidValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What is wrong.
        why: String,
    },
}

fn invalid(key: &str, value: &str, why: impl ToString) -> TopicConfigError {
    TopicConfigError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        why: why.to_string(),
    }
}

fn parse_i64(key: &str, value: &str) -> Result<i64, TopicConfigError> {
    value.parse::<i64>().map_err(|e| invalid(key, value, e))
}

impl TopicConfig {
    /// The effective config from explicit `configs` over `defaults`; every key and value
    /// is checked, and the resulting `LogConfig` validated.
    pub fn resolve(
        defaults: &LogConfig,
        configs: &BTreeMap<String, String>,
    ) -> Result<Self, TopicConfigError> {
        let mut config = Self {
            log: defaults.clone(),
            max_message_bytes: MAX_MESSAGE_BYTES_DEFAULT,
            producer_id_expiration_ms: PRODUCER_ID_EXPIRATION_MS_DEFAULT,
        };
        for (key, value) in configs {
            config.set(key, value)?;
        }
        config
            .log
            .validate()
            .map_err(|e| invalid("config", "", e))?;
        Ok(config)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), TopicConfigError> {
        let log = &mut self.log;
        match key {
            "cleanup.policy" => {
                log.cleanup_policy = match value {
                    "delete" => CleanupPolicy::Delete,
                    "compact" => CleanupPolicy::Compact,
                    "compact,delete" | "delete,compact" => CleanupPolicy::CompactAndDelete,
                    _ => {
                        return Err(invalid(
                            key,
                            value,
                            "expected delete, compact or compact,delete",
                        ));
                    }
                }
            }
            "delete.retention.ms" => log.delete_retention_ms = parse_i64(key, value)?,
            "max.message.bytes" => {
                let v = value.parse::<u64>().map_err(|e| invalid(key, value, e))?;
                if v == 0 || v > MAX_MESSAGE_BYTES_LIMIT {
                    return Err(invalid(
                        key,
                        value,
                        format!("must be between 1 and {MAX_MESSAGE_BYTES_LIMIT}"),
                    ));
                }
                self.max_message_bytes = v;
            }
            "min.cleanable.dirty.ratio" => {
                log.min_cleanable_dirty_ratio =
                    value.parse::<f64>().map_err(|e| invalid(key, value, e))?
            }
            "retention.bytes" => {
                let v = parse_i64(key, value)?;
                log.retention_bytes = u64::try_from(v).ok();
            }
            "retention.ms" => {
                let v = parse_i64(key, value)?;
                log.retention_ms = (v >= 0).then_some(v);
            }
            "segment.bytes" => {
                log.segment_bytes = value.parse::<u64>().map_err(|e| invalid(key, value, e))?
            }
            "segment.ms" => log.segment_ms = parse_i64(key, value)?,
            "producer.id.expiration.ms" => {
                let v = parse_i64(key, value)?;
                if v < 1 {
                    return Err(invalid(key, value, "must be at least 1"));
                }
                self.producer_id_expiration_ms = v;
            }
            _ => return Err(TopicConfigError::UnknownKey(key.to_string())),
        }
        Ok(())
    }

    /// Every key with its effective value, for `describe`.
    pub fn describe(&self) -> BTreeMap<String, String> {
        let log = &self.log;
        let policy = match log.cleanup_policy {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactAndDelete => "compact,delete",
        };
        let pairs = [
            ("cleanup.policy", policy.to_string()),
            ("delete.retention.ms", log.delete_retention_ms.to_string()),
            ("max.message.bytes", self.max_message_bytes.to_string()),
            (
                "min.cleanable.dirty.ratio",
                log.min_cleanable_dirty_ratio.to_string(),
            ),
            (
                "retention.bytes",
                log.retention_bytes
                    .map_or("-1".to_string(), |b| b.to_string()),
            ),
            (
                "retention.ms",
                log.retention_ms.map_or("-1".to_string(), |b| b.to_string()),
            ),
            ("segment.bytes", log.segment_bytes.to_string()),
            ("segment.ms", log.segment_ms.to_string()),
            (
                "producer.id.expiration.ms",
                self.producer_id_expiration_ms.to_string(),
            ),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kafka_keys_resolve_and_bad_ones_are_refused() {
        let defaults = LogConfig::default();
        let c = TopicConfig::resolve(
            &defaults,
            &configs(&[
                ("cleanup.policy", "compact"),
                ("retention.ms", "-1"),
                ("segment.bytes", "1048576"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.log.cleanup_policy, CleanupPolicy::Compact);
        assert_eq!(c.log.retention_ms, None);
        assert_eq!(c.describe().len(), 9);
        assert!(matches!(
            TopicConfig::resolve(&defaults, &configs(&[("nope", "1")])),
            Err(TopicConfigError::UnknownKey(_))
        ));
        assert!(TopicConfig::resolve(&defaults, &configs(&[("segment.bytes", "12")])).is_err());
        assert!(TopicConfig::resolve(&defaults, &configs(&[("max.message.bytes", "0")])).is_err());
        assert!(TopicConfig::resolve(&defaults, &configs(&[("retention.ms", "soon")])).is_err());
    }
}
