
pub mod audit;
pub mod errors;
pub mod keys;
pub mod store;
pub mod validation;
