//! How a catalogue fails: the error that names the badge (or XP rule, event type, leaderboard)
//! and the path of the field to fix, shared by reading the document and compiling it.

use std::fmt;

/// A catalogue that failed validation. `badge` names the badge (or XP rule, or event type) and
/// `field` the path inside it, so an operator can find the line to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct CatalogueError {
    pub badge: Option<String>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for CatalogueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.badge {
            Some(b) => write!(f, "{b}: field `{}`: {}", self.field, self.message),
            None => write!(f, "field `{}`: {}", self.field, self.message),
        }
    }
}

pub(super) fn err(owner: Option<&str>, field: impl Into<String>, message: impl Into<String>) -> CatalogueError {
    CatalogueError { badge: owner.map(str::to_string), field: field.into(), message: message.into() }
}
