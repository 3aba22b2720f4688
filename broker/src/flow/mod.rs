//! Flow control: the produce byte budgets and the byte-rate quotas per principal.

pub mod produce_budget;
pub mod quota;
