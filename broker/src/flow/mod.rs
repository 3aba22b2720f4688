//! Flow control: the produce byte budgets.

pub mod produce_budget;
