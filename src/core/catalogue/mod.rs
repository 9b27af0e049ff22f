//! The catalogue: the versioned document that defines event types, XP rules, the level curve and
//! every badge, and its compilation into the indices and stat slots the engine runs on.
//!
//! Compiling is where the catalogue's cost is paid once: every leaf rule becomes a stat slot
//! (identical rules share one), rules are indexed by the event types that can change them, and
//! the fields that pattern rules read from the last-N cache are chosen. The format is documented
//! in `docs/catalogue.md`.
//!
//! - `document`: the document as written (TOML or JSON), and the demo catalogue.
//! - `model`: the compiled catalogue the engine runs on.
//! - `compile`: from document to model: settings, types, levels, XP, badges, leaderboards.
//! - `rules`: from one badge rule to stat slots, cache reads and a condition.
//! - `error`: the error both report, naming the field to fix.
//!
//! The submodules are private: the rest of the crate names everything through this module, as
//! it did when the catalogue was one file.

mod compile;
mod document;
mod error;
mod model;
mod rules;

pub use document::{Format, DEMO_CATALOGUE};
pub use error::CatalogueError;
pub use model::{
    table_value, BadgeDef, BoardDef, Cmp, BoardMetric, Catalogue, Cond, EventTypeDef, FieldDef, FieldKind, Give, CommunityGoalDef, Levels, ProgressSlot, RecentCond, RecentRing, RecentWords, SameKey,
    Settings, StatDef, StatInput, StatKind, SumLimit, Teams, Tier, WindowReq, XpAmount, XpRuleDef, MEMBER_FIELD, PROFILE_EVENT, TEAM_PREFIX, team_entity, team_of,
    valid_team_id, valid_user_id,
};
