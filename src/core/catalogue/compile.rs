//! Compiling a catalogue document into the model: settings, event types, the level curve, XP
//! rules, badges (their rules through `rules`), leaderboards, and the cache rings and layout
//! hash that tie user state to the catalogue. `Catalogue::parse` and `Catalogue::for_goal`, the
//! two ways a catalogue is built, are here.

use super::document::{part, take_describes, Doc, DocBadge, DocBoard, DocCommunityGoal, DocEventType, DocTeams, DocXp, Format, DEMO_CATALOGUE};
use super::error::{err, CatalogueError};
use super::model::{
    BadgeDef, BoardDef, BoardMetric, Catalogue, CommunityGoalDef, Cond, EventTypeDef, FieldDef, FieldKind, Give, Levels, ProgressSlot, Settings, StatInput, StatKind, Teams, XpAmount, XpRuleDef,
    MEMBER_FIELD, PROFILE_EVENT,
};
use super::rules::Builder;
use crate::core::calendar::Period;
use crate::core::predicate::Pred;
use crate::core::value::{parse_duration, stable_hash, Millis};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

impl Catalogue {
    pub fn demo() -> Catalogue {
        Catalogue::parse(DEMO_CATALOGUE, Format::Toml).expect("the embedded demo catalogue is valid")
    }

    pub fn parse(text: &str, format: Format) -> Result<Catalogue, CatalogueError> {
        let value: serde_json::Value = match format {
            Format::Toml => toml::from_str(text).map_err(|e| err(None, "document", format!("not valid TOML: {}", e.message())))?,
            Format::Json => serde_json::from_str(text).map_err(|e| err(None, "document", format!("not valid JSON: {e}")))?,
        };
        let mut cat = compile(value.clone(), false)?;
        cat.source = text.to_string();
        cat.id = stable_hash(format!("{}\u{1f}{}", cat.version, text).as_bytes());
        cat.teams = compile_teams(&value, &cat)?.map(Arc::new);
        cat.document = Arc::new(value);
        Ok(cat)
    }

    /// The catalogue an assigned goal is tracked with: this catalogue's event types and
    /// settings, and one badge, `goal`, whose rule is the goal's criterion (in the same rule
    /// language). Errors name the field inside the criterion.
    pub fn for_goal(&self, title: &str, criterion: &serde_json::Value) -> Result<Catalogue, CatalogueError> {
        let mut v = (*self.document).clone();
        let Some(doc) = v.as_object_mut() else { return Err(err(None, "criterion", "the catalogue document is not an object")) };
        doc.insert("badges".into(), serde_json::json!([{ "id": "goal", "name": title, "tier": "bronze", "rule": criterion }]));
        doc.insert("xp".into(), serde_json::json!([]));
        doc.insert("leaderboards".into(), serde_json::json!([]));
        doc.remove("community_goals");
        let mut cat = compile(v, false).map_err(|e| {
            let field = match e.field.strip_prefix("rule") {
                Some(rest) => format!("criterion{rest}"),
                None => e.field.clone(),
            };
            err(None, field, e.message)
        })?;
        if matches!(cat.badges[0].cond, Cond::Never) {
            return Err(err(None, "criterion.kind", "a goal needs a rule that events can meet"));
        }
        cat.version = self.version;
        cat.id = stable_hash(format!("goal\u{1f}{}\u{1f}{title}\u{1f}{criterion}", self.id).as_bytes());
        Ok(cat)
    }
}

/// The team catalogue of a document with a `[teams]` section (docs/teams.md): the document's
/// event types and settings, each event type with the `member` field added and without its
/// fingerprint (the member's side applied it), and the section's
/// levels (one level if it gives none), XP rules, badges and leaderboards. Its errors name the
/// team badge (or rule, or leaderboard) and the field, as the user catalogue's do.
fn compile_teams(doc: &serde_json::Value, parent: &Catalogue) -> Result<Option<Teams>, CatalogueError> {
    let Some(section) = doc.get("teams") else { return Ok(None) };
    let t: DocTeams = part(section.clone(), None, "teams")?;
    if !(1..=100_000).contains(&t.max_members) {
        return Err(err(None, "teams.max_members", "must be between 1 and 100000"));
    }
    if !(1..=100).contains(&t.max_teams_per_user) {
        return Err(err(None, "teams.max_teams_per_user", "must be between 1 and 100"));
    }
    if t.badges.is_empty() && t.xp.is_empty() {
        return Err(err(None, "teams", "a teams section needs at least one badge or XP rule: otherwise a team counts nothing"));
    }
    let mut v = doc.clone();
    let obj = v.as_object_mut().expect("the document parsed as a struct, so it is an object");
    obj.remove("teams");
    // The tenant's community goals count users' events, once, on the users' side.
    obj.remove("community_goals");
    if let Some(types) = obj.get_mut("event_types").and_then(|t| t.as_object_mut()) {
        for (name, ty) in types.iter_mut() {
            // A team's own profile (its name, time zone) is no member's event.
            if name == PROFILE_EVENT {
                continue;
            }
            let Some(ty) = ty.as_object_mut() else { continue };
            // The member's side judged her action's fingerprint already; across members the
            // same article read by two people is two reads.
            ty.remove("fingerprint");
            ty.remove("fingerprint_window");
            let fields = ty.entry("fields").or_insert_with(|| serde_json::json!({}));
            let Some(fields) = fields.as_object_mut() else { continue };
            if fields.contains_key(MEMBER_FIELD) {
                return Err(err(Some(&format!("event type `{name}`")), format!("fields.{MEMBER_FIELD}"), "a catalogue with teams adds this field to every event type (the member whose event it was); rename yours"));
            }
            fields.insert(MEMBER_FIELD.into(), serde_json::json!("string"));
        }
    }
    obj.insert("levels".into(), t.levels.unwrap_or_else(|| serde_json::json!({ "thresholds": [0] })));
    obj.insert("xp".into(), serde_json::Value::Array(t.xp));
    obj.insert("badges".into(), serde_json::Value::Array(t.badges));
    obj.insert("leaderboards".into(), serde_json::Value::Array(t.leaderboards));
    let mut catalogue = compile(v, true).map_err(|e| {
        let field = if e.badge.is_none() && !e.field.starts_with("teams") { format!("teams.{}", e.field) } else { e.field.clone() };
        CatalogueError { badge: e.badge.map(|b| format!("team {b}")), field, message: e.message }
    })?;
    // A team badge's gift is a badge of the members' own catalogue, given from outside its rules.
    for b in &catalogue.badges {
        let Some(g) = &b.give else { continue };
        let o = format!("team badge `{}`", b.id);
        match parent.badge(&g.badge) {
            None => return Err(err(Some(&o), "give.badge", format!("unknown badge `{}`: give a badge of users (kind \"awarded\") declared in the catalogue's badges", g.badge))),
            Some(u) if !matches!(u.cond, Cond::Never) => return Err(err(Some(&o), "give.badge", format!("badge `{}` must have the rule {{ kind = \"awarded\" }}: it is given by the team, not earned by events", g.badge))),
            Some(_) => {}
        }
    }
    // Team boards and user boards share the tenant's leaderboard routes, so one id names one.
    for b in catalogue.boards.iter_mut() {
        if parent.boards.iter().any(|p| p.id == b.id) {
            return Err(err(Some(&format!("team leaderboard `{}`", b.id)), "id", "a leaderboard of users has this id too; a team leaderboard needs an id of its own"));
        }
        b.ranks_teams = true;
    }
    catalogue.version = parent.version;
    catalogue.id = stable_hash(format!("teams\u{1f}{}", parent.id).as_bytes());
    Ok(Some(Teams { catalogue: Arc::new(catalogue), max_members: t.max_members, max_teams_per_user: t.max_teams_per_user }))
}

/// `teams`: whether the document is a team catalogue (built by `compile_teams`), whose badges
/// may `give` a badge to the team's members.
fn compile(doc_value: serde_json::Value, teams: bool) -> Result<Catalogue, CatalogueError> {
    let doc: Doc = part(doc_value, None, "")?;
    let s = &doc.settings;
    let dur = |f: &str, v: &str| parse_duration(v).map_err(|m| err(None, format!("settings.{f}"), m));
    if s.cache_size == 0 || s.cache_size > 10_000 {
        return Err(err(None, "settings.cache_size", "must be between 1 and 10000"));
    }
    let settings = Settings {
        cache_size: s.cache_size,
        recent_ids: s.recent_ids.clamp(1, 100_000),
        late_bound: dur("late_bound", &s.late_bound)?,
        future_skew: dur("future_skew", &s.future_skew)?,
        default_timezone: s
            .default_timezone
            .parse()
            .map_err(|_| err(None, "settings.default_timezone", format!("unknown time zone `{}`", s.default_timezone)))?,
    };

    let mut b = Builder {
        types: Vec::new(),
        type_index: HashMap::new(),
        stats: Vec::new(),
        stat_ids: HashMap::new(),
        cache_wants: Vec::new(),
        tables: doc.tables.clone(),
        badge_ids: HashMap::new(),
    };

    let mut type_docs: Vec<(String, DocEventType)> = doc.event_types.into_iter().collect();
    if !type_docs.iter().any(|(n, _)| n == PROFILE_EVENT) {
        // The profile event is always available to the app's backend, so segmentation works
        // in every catalogue.
        type_docs.push((
            PROFILE_EVENT.into(),
            DocEventType { client: false, fields: BTreeMap::new(), fingerprint: vec![], fingerprint_window: None },
        ));
    }
    for (name, t) in type_docs {
        let owner = format!("event type `{name}`");
        if name.is_empty() || name.len() > 64 {
            return Err(err(Some(&owner), "name", "must be 1 to 64 characters"));
        }
        let mut fields = Vec::new();
        for (fname, kind) in &t.fields {
            let (k, optional) = match kind.strip_suffix('?') {
                Some(k) => (k, true),
                None => (kind.as_str(), false),
            };
            let kind = match k {
                "string" => FieldKind::String,
                "number" => FieldKind::Number,
                "bool" => FieldKind::Bool,
                "any" => FieldKind::Any,
                other => {
                    return Err(err(Some(&owner), format!("fields.{fname}"), format!("unknown type `{other}` (use string, number, bool or any; add ? for optional)")));
                }
            };
            fields.push(FieldDef { name: fname.clone(), kind, optional });
        }
        let mut def = EventTypeDef {
            name: name.clone(),
            client: t.client,
            fields,
            fingerprint: None,
            cache: None,
            cached_fields: vec![],
            stats: vec![],
            xp_rules: vec![],
            badges: vec![],
            progress: vec![],
            checks: vec![],
        };
        if !t.fingerprint.is_empty() {
            let mut pos = Vec::new();
            for f in &t.fingerprint {
                pos.push(def.field(f).ok_or_else(|| err(Some(&owner), "fingerprint", format!("`{f}` is not a declared field")))?);
            }
            let window = t
                .fingerprint_window
                .as_deref()
                .ok_or_else(|| err(Some(&owner), "fingerprint_window", "a fingerprint needs a window, e.g. \"1h\""))
                .and_then(|w| parse_duration(w).map_err(|m| err(Some(&owner), "fingerprint_window", m)))?;
            def.fingerprint = Some((pos, window));
        }
        b.type_index.insert(name, b.types.len());
        b.types.push(def);
        b.cache_wants.push(Vec::new());
    }

    let levels = match (&doc.levels.thresholds, doc.levels.base) {
        (Some(t), None) => {
            if t.first() != Some(&0) || t.windows(2).any(|w| w[0] >= w[1]) {
                return Err(err(None, "levels.thresholds", "must start at 0 and increase strictly"));
            }
            Levels::Thresholds(t.clone())
        }
        (None, Some(base)) => {
            let exponent = doc.levels.exponent.unwrap_or(2.0);
            if !(base > 0.0) || !(exponent > 0.0) {
                return Err(err(None, "levels", "base and exponent must be positive"));
            }
            Levels::Formula { base, exponent, max_level: doc.levels.max_level.unwrap_or(100).max(1) }
        }
        _ => return Err(err(None, "levels", "give either `thresholds` or `base` (with optional exponent and max_level)")),
    };

    let mut xp_rules = Vec::new();
    let mut xp_ids = std::collections::HashSet::new();
    for (i, v) in doc.xp.into_iter().enumerate() {
        let owner_guess = v.get("id").and_then(|x| x.as_str()).map(|x| format!("xp rule `{x}`")).unwrap_or(format!("xp rule #{}", i + 1));
        let x: DocXp = part(v, Some(&owner_guess), "")?;
        let owner = Some(owner_guess.as_str());
        if !xp_ids.insert(x.id.clone()) {
            return Err(err(owner, "id", "duplicate XP rule id"));
        }
        let t = *b.type_index.get(&x.event).ok_or_else(|| err(owner, "event", format!("unknown event type `{}`", x.event)))?;
        let when = b.pred_on_type(t, x.when.as_ref()).map_err(|m| err(owner, "when", m))?;
        let amount = match (x.amount, &x.amount_field) {
            (Some(a), None) => XpAmount::Fixed(a),
            (None, Some(f)) => {
                let pos = b.types[t].field(f).ok_or_else(|| err(owner, "amount_field", format!("`{f}` is not a declared field")))?;
                if b.types[t].fields[pos].kind != FieldKind::Number {
                    return Err(err(owner, "amount_field", format!("`{f}` must be declared as a number")));
                }
                if !(x.multiplier >= 0.0) {
                    return Err(err(owner, "multiplier", "must not be negative"));
                }
                XpAmount::Field { pos, multiplier: x.multiplier }
            }
            _ => return Err(err(owner, "amount", "give exactly one of `amount` or `amount_field`")),
        };
        b.types[t].xp_rules.push(xp_rules.len());
        xp_rules.push(XpRuleDef { id: x.id.as_str().into(), event: t, when, amount, max: x.max, daily_cap: x.daily_cap });
    }

    // Badge ids first, so `badge` conditions may name badges defined later in the document.
    let mut docs = Vec::new();
    for (i, v) in doc.badges.into_iter().enumerate() {
        let owner = v.get("id").and_then(|x| x.as_str()).map(|x| format!("badge `{x}`")).unwrap_or(format!("badge #{}", i + 1));
        let mut v = v;
        let mut describes = BTreeMap::new();
        if let Some(rule) = v.get_mut("rule") {
            take_describes(rule, "rule", Some(&owner), &mut describes)?;
        }
        let d: DocBadge = part(v, Some(&owner), "")?;
        if let Some(text) = &d.describe {
            if describes.contains_key("rule") {
                return Err(err(Some(&owner), "describe", "give `describe` on the badge or on its rule, not both"));
            }
            let mut one = serde_json::json!({ "describe": text });
            take_describes(&mut one, "rule", Some(&owner), &mut describes).map_err(|e| err(Some(&owner), "describe", e.message))?;
        }
        if d.id.is_empty() || d.id.len() > 64 || !d.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(err(Some(&owner), "id", "use 1 to 64 letters, digits, '-', '_' or '.'"));
        }
        if b.badge_ids.insert(d.id.clone(), i).is_some() {
            return Err(err(Some(&owner), "id", "duplicate badge id"));
        }
        docs.push((owner, d, describes));
    }

    let mut badges = Vec::new();
    for (owner, d, describes) in docs {
        let o = Some(owner.as_str());
        let cond = b.rule(&d.rule, o, "rule")?;
        if let Some(every) = d.repeat_every {
            let ok = matches!(&cond, Cond::Metric { stat, .. } if matches!(b.stats[*stat].kind, StatKind::Count | StatKind::Sum | StatKind::Comeback { .. } | StatKind::Absence { .. })) || matches!(cond, Cond::Tenure(_));
            if !ok || !(every > 0.0) {
                return Err(err(o, "repeat_every", "needs a positive number and a count, sum, comeback, absence or tenure rule (use repeat = true for others)"));
            }
            // A count moves by one and tenure by whole days: a smaller step would award many
            // times at once (0.001 days is a million awards in a day of membership).
            match &cond {
                Cond::Tenure(ms) => {
                    if every < 1.0 || every.fract() != 0.0 || every > 100_000.0 {
                        return Err(err(o, "repeat_every", "on a tenure rule counts whole days: give a whole number from 1 to 100000"));
                    }
                    if *ms > (every * crate::core::value::DAY as f64) as Millis {
                        return Err(err(o, "repeat_every", "must be at least the rule's `days`: the first award comes at `days`, the next ones every `repeat_every` days after it"));
                    }
                }
                Cond::Metric { stat, .. } if matches!(b.stats[*stat].kind, StatKind::Count | StatKind::Comeback { .. } | StatKind::Absence { .. }) && every < 1.0 => {
                    return Err(err(o, "repeat_every", "on a count must be at least 1: a count grows by one at a time"));
                }
                _ => {}
            }
        }
        let repeat = if d.repeat {
            if d.repeat_every.is_some() || d.per_key.is_some() {
                return Err(err(o, "repeat", "cannot be combined with repeat_every or per_key"));
            }
            if cond.keyed(&b.stats) {
                return Err(err(o, "repeat", "takes a rule that is not kept per key (`per`, `same`, `in_key`): whether it holds changes with each event's key"));
            }
            if let Some(why) = cond.unseen_fall(&b.stats, true) {
                return Err(err(o, "repeat", why));
            }
            if !cond.can_fall(&b.stats) {
                return Err(err(o, "repeat", "this rule never stops holding once it holds, so it could not be earned again (for counts and sums use repeat_every)"));
            }
            Some(b.stat(StatKind::Held, None, vec![], format!("Held|{}", d.id), format!("whether the rule of {} held when last checked", d.id)))
        } else {
            None
        };
        if let Some(k) = &d.per_key {
            let events = cond_events(&cond, &b);
            if events.is_empty() || events.iter().any(|&t| b.types[t].field(k).is_none()) {
                return Err(err(o, "per_key", format!("`{k}` must be a field of every event type the rule reads")));
            }
            if d.repeat_every.is_some() {
                return Err(err(o, "per_key", "cannot be combined with repeat_every"));
            }
        }
        let time = |f: &str, v: &Option<String>| -> Result<Option<Millis>, CatalogueError> {
            v.as_ref()
                .map(|t| {
                    chrono::DateTime::parse_from_rfc3339(t)
                        .map(|d| d.timestamp_millis())
                        .map_err(|_| err(o, f, format!("`{t}` is not an RFC 3339 time")))
                })
                .transpose()
        };
        let available_from = time("available_from", &d.available_from)?;
        let available_until = time("available_until", &d.available_until)?;
        if let (Some(f), Some(u)) = (available_from, available_until)
            && f >= u
        {
            return Err(err(o, "available_until", "must be after available_from"));
        }
        let valid_for = match &d.valid_for {
            None => None,
            Some(text) => {
                let ms = parse_duration(text).map_err(|m| err(o, "valid_for", m))?;
                if ms < crate::core::value::MINUTE {
                    return Err(err(o, "valid_for", format!("`{text}` is too short: give at least a minute, like 30d or 365d")));
                }
                if d.per_key.is_some() {
                    return Err(err(o, "valid_for", "cannot be combined with per_key: every key of the badge would expire with its latest award"));
                }
                // Earned again after it expires means earned on new facts: a count or sum is
                // counted anew from the expiry (`Cond::base_stat`), a rule that can stop holding
                // must hold again. Any other rule (a tenure, a level, owning a badge) still holds
                // and would give the badge back at the very next event.
                if cond.base_stat(&b.stats).is_none() && !cond.can_fall(&b.stats) && !matches!(cond, Cond::Never) {
                    return Err(err(
                        o,
                        "valid_for",
                        "this rule never stops holding once it holds, so the badge would be given back at the next event after it expires (use a count, a sum, or a rule that can stop holding, like a window or a streak)",
                    ));
                }
                Some(ms)
            }
        };
        let give = match &d.give {
            None => None,
            Some(_) if !teams => return Err(err(o, "give", "only a badge of the [teams] section gives a badge, to the members of the team that earns it")),
            Some(g) => Some(Give {
                badge: g.badge.as_str().into(),
                contributors: match g.to.as_str() {
                    "members" => None,
                    "contributors" => {
                        if d.repeat_every.is_some() || d.repeat || d.per_key.is_some() {
                            return Err(err(o, "give.to", "the contributors are those of the team's whole life, not of each repeat: give a repeatable badge to `members`"));
                        }
                        Some(contributors_stat(&mut b, &cond, &d.id).ok_or_else(|| err(o, "give.to", "this rule reads no member's event (an `awarded` badge is given from outside), so nobody contributes to it: give it to `members`"))?)
                    }
                    other => return Err(err(o, "give.to", format!("unknown `{other}` (use members or contributors)"))),
                },
            }),
        };
        let idx = badges.len();
        let events: Vec<usize> = cond_events(&cond, &b);
        if !d.retired {
            for &t in &events {
                b.types[t].badges.push(idx);
            }
        }
        badges.push(BadgeDef {
            id: d.id.as_str().into(),
            name: d.name,
            description: d.description,
            tier: d.tier,
            xp: d.xp,
            icon: d.icon,
            hidden: d.hidden,
            repeat_every: d.repeat_every,
            repeat,
            per_key_pos: b.types.iter().map(|t| d.per_key.as_deref().and_then(|k| t.field(k))).collect(),
            per_key: d.per_key,
            available_from,
            available_until,
            valid_for,
            retired: d.retired,
            events: events.iter().map(|&t| b.types[t].name.clone()).collect(),
            cond,
            describes,
            give,
        });
    }
    let user_badges: Vec<usize> = (0..badges.len()).filter(|&i| !badges[i].retired && badges[i].cond.depends_on_user()).collect();
    for ty in &mut b.types {
        ty.checks = ty.badges.iter().copied().filter(|i| !user_badges.contains(i)).collect();
        ty.progress = ty
            .badges
            .iter()
            .filter_map(|&i| match badges[i].cond {
                Cond::Metric { stat, target } => {
                    let bit = ty.stats.iter().position(|&x| x == stat)?;
                    Some(ProgressSlot { badge: i, bit, stat, target, repeat_every: badges[i].repeat_every, hidden: badges[i].hidden, each: None, again: badges[i].repeat.is_some() })
                }
                Cond::Keys { stat, each, target } => {
                    let bit = ty.stats.iter().position(|&x| x == stat)?;
                    Some(ProgressSlot { badge: i, bit, stat, target, repeat_every: None, hidden: badges[i].hidden, each: Some(each), again: badges[i].repeat.is_some() })
                }
                _ => None,
            })
            .collect();
    }

    // Cache rings: one per event type that a window or recent rule reads, keeping only the
    // fields those rules read. Conditions were compiled against `cache_wants` positions, so the
    // ring layout must follow the same order.
    let mut rings = Vec::new();
    for (t, wants) in b.cache_wants.iter().enumerate() {
        if b.types[t].cache.is_some() {
            let positions = wants.iter().map(|w| b.types[t].field(w).expect("checked")).collect();
            b.types[t].cached_fields = positions;
            rings.push((t, wants.clone()));
        }
    }
    let mut layout_text = String::new();
    for s in &b.stats {
        layout_text.push_str(&format!("{:x};", s.id));
    }
    for (t, f) in &rings {
        layout_text.push_str(&format!("{}:{};", b.types[*t].name, f.join(",")));
    }
    let badge_index: HashMap<String, usize> = badges.iter().enumerate().map(|(i, d)| (d.id.to_string(), i)).collect();
    let boards = compile_boards(doc.leaderboards, &b, &badges, &badge_index)?;
    let community = compile_community(doc.community_goals, &b)?;
    let calendar = b.stats.iter().any(|s| matches!(s.kind, StatKind::Calendar { .. }));
    let absence_badges = badges.iter().enumerate().filter(|(_, d)| matches!(d.cond, Cond::Metric { stat, .. } if matches!(b.stats[stat].kind, StatKind::Absence { .. }))).map(|(i, _)| i).collect();
    let once = badges.iter().map(|d| !d.repeatable()).collect();
    Ok(Catalogue {
        version: doc.version,
        id: 0,
        name: doc.name,
        layout: stable_hash(layout_text.as_bytes()),
        settings,
        types: b.types,
        type_index: b.type_index,
        xp_rules,
        levels,
        stats: b.stats,
        badges,
        badge_index,
        user_badges,
        once,
        rings,
        boards,
        community,
        calendar,
        absence_badges,
        source: String::new(),
        document: Arc::new(serde_json::Value::Null),
        teams: None,
    })
}

fn compile_boards(docs: Vec<serde_json::Value>, b: &Builder, badges: &[BadgeDef], badge_index: &HashMap<String, usize>) -> Result<Vec<BoardDef>, CatalogueError> {
    let mut out: Vec<BoardDef> = Vec::new();
    for (i, v) in docs.into_iter().enumerate() {
        let owner = v.get("id").and_then(|x| x.as_str()).map(|x| format!("leaderboard `{x}`")).unwrap_or(format!("leaderboard #{}", i + 1));
        let d: DocBoard = part(v, Some(&owner), "")?;
        let o = Some(owner.as_str());
        if d.id.is_empty() || d.id.len() > 64 || !d.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(err(o, "id", "use 1 to 64 letters, digits, '-', '_' or '.'"));
        }
        if out.iter().any(|x| *x.id == *d.id) {
            return Err(err(o, "id", "duplicate leaderboard id"));
        }
        let event = || -> Result<usize, CatalogueError> {
            let name = d.event.as_deref().ok_or_else(|| err(o, "event", format!("a `{}` leaderboard needs an `event`", d.metric)))?;
            b.type_id(name).map_err(|m| err(o, "event", m))
        };
        let (metric, describe) = match d.metric.as_str() {
            "xp" => {
                if d.event.is_some() || d.when.is_some() || d.field.is_some() {
                    return Err(err(o, "metric", "an `xp` leaderboard takes no event, when or field"));
                }
                (BoardMetric::Xp, "xp".to_string())
            }
            "count" | "sum" => {
                let t = event()?;
                let when = b.pred_on_type(t, d.when.as_ref()).map_err(|m| err(o, "when", m))?;
                if d.metric == "count" {
                    if d.field.is_some() {
                        return Err(err(o, "field", "a `count` leaderboard takes no field"));
                    }
                    (BoardMetric::Count { event: t, when }, format!("count of {}", b.types[t].name))
                } else {
                    let f = d.field.as_deref().ok_or_else(|| err(o, "field", "a `sum` leaderboard needs a number `field`"))?;
                    let pos = b.types[t].field(f).filter(|&p| b.types[t].fields[p].kind == FieldKind::Number);
                    let pos = pos.ok_or_else(|| err(o, "field", format!("`{f}` is not a number field of `{}`", b.types[t].name)))?;
                    (BoardMetric::Sum { event: t, when, field: pos }, format!("sum of {} {f}", b.types[t].name))
                }
            }
            other => return Err(err(o, "metric", format!("unknown metric `{other}` (use xp, count or sum)"))),
        };
        let time = |f: &str, v: &Option<String>| -> Result<Option<Millis>, CatalogueError> {
            v.as_ref()
                .map(|t| chrono::DateTime::parse_from_rfc3339(t).map(|d| d.timestamp_millis()).map_err(|_| err(o, f, format!("`{t}` is not an RFC 3339 time"))))
                .transpose()
        };
        let (starts, ends) = (time("starts", &d.starts)?, time("ends", &d.ends)?);
        let period = match (d.period.as_str(), starts, ends) {
            ("custom", Some(start), Some(end)) if start < end => Period::Custom { start, end },
            ("custom", Some(_), Some(_)) => return Err(err(o, "ends", "must be after starts")),
            ("custom", _, _) => return Err(err(o, "period", "a custom period needs `starts` and `ends`")),
            (_, Some(_), _) | (_, _, Some(_)) => return Err(err(o, "starts", "only a custom period takes starts and ends")),
            ("all_time", ..) => Period::AllTime,
            ("daily", ..) => Period::Daily,
            ("weekly", ..) => Period::Weekly,
            ("monthly", ..) => Period::Monthly,
            (other, ..) => return Err(err(o, "period", format!("unknown period `{other}` (use all_time, daily, weekly, monthly or custom)"))),
        };
        if d.size == Some(0) {
            return Err(err(o, "size", "must be at least 1"));
        }
        let award = match &d.award {
            None => None,
            Some(a) => {
                let &bi = badge_index.get(&a.badge).ok_or_else(|| err(o, "award.badge", format!("unknown badge `{}`", a.badge)))?;
                if !matches!(badges[bi].cond, Cond::Never) {
                    return Err(err(o, "award.badge", format!("badge `{}` must have the rule {{ kind = \"awarded\" }}", a.badge)));
                }
                if matches!(period, Period::AllTime) {
                    return Err(err(o, "award", "an all-time board never closes, so it cannot award a badge"));
                }
                if a.top == 0 || d.size.is_some_and(|s| a.top > s) {
                    return Err(err(o, "award.top", "must be at least 1 and within the board's size"));
                }
                Some((bi, a.top))
            }
        };
        let name = if d.name.is_empty() { d.id.clone() } else { d.name };
        out.push(BoardDef { id: d.id.as_str().into(), name, metric, period, segment_by: d.segment_by, size: d.size, award, describe, ranks_teams: false });
    }
    Ok(out)
}

/// The community goals: each names a declared event type, a positive target, and a deadline
/// after its start; errors name the goal and the field.
fn compile_community(docs: Vec<serde_json::Value>, b: &Builder) -> Result<Vec<CommunityGoalDef>, CatalogueError> {
    let mut out: Vec<CommunityGoalDef> = Vec::new();
    for (i, v) in docs.into_iter().enumerate() {
        let owner = v.get("id").and_then(|x| x.as_str()).map(|x| format!("community goal `{x}`")).unwrap_or(format!("community goal #{}", i + 1));
        let d: DocCommunityGoal = part(v, Some(&owner), "")?;
        let o = Some(owner.as_str());
        if d.id.is_empty() || d.id.len() > 64 || !d.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(err(o, "id", "use 1 to 64 letters, digits, '-', '_' or '.'"));
        }
        if out.iter().any(|x| *x.id == *d.id) {
            return Err(err(o, "id", "duplicate community goal id"));
        }
        let t = b.type_id(&d.event).map_err(|m| err(o, "event", m))?;
        let when = b.pred_on_type(t, d.when.as_ref()).map_err(|m| err(o, "when", m))?;
        let field = match &d.field {
            None => None,
            Some(f) => Some(b.types[t].field(f).filter(|&p| b.types[t].fields[p].kind == FieldKind::Number).ok_or_else(|| err(o, "field", format!("`{f}` is not a number field of `{}`", d.event)))?),
        };
        if !(d.target > 0.0 && d.target.is_finite()) {
            return Err(err(o, "target", "must be a positive number"));
        }
        let time = |f: &str, t: &str| chrono::DateTime::parse_from_rfc3339(t).map(|d| d.timestamp_millis()).map_err(|_| err(o, f, format!("`{t}` is not an RFC 3339 time")));
        let ends = time("ends", &d.ends)?;
        let starts = d.starts.as_deref().map(|s| time("starts", s)).transpose()?;
        if starts.is_some_and(|s| s >= ends) {
            return Err(err(o, "ends", "must be after starts"));
        }
        let describe = match &d.field {
            Some(f) => format!("sum of {} {f}", d.event),
            None => format!("count of {}", d.event),
        };
        let name = if d.name.is_empty() { d.id.clone() } else { d.name };
        out.push(CommunityGoalDef { key: format!("{}@{ends}", d.id).into(), id: d.id.as_str().into(), name, description: d.description, event: t, when, field, target: d.target, starts, ends, describe });
    }
    Ok(out)
}

/// A team badge's contributors: a stat of the different members whose events the badge's rule
/// reads, with the conditions its stats put on them (any event of the types it reads, for a
/// rule over the recent cache or a window). None when the rule reads no event.
fn contributors_stat(b: &mut Builder, cond: &Cond, badge: &str) -> Option<usize> {
    fn stats_of(c: &Cond, out: &mut Vec<usize>) {
        match c {
            Cond::Metric { stat, .. } | Cond::Sequence { stat } | Cond::Keys { stat, .. } => out.push(*stat),
            Cond::Ratio { of, to, .. } => out.extend([*of, *to]),
            Cond::All(cs) | Cond::Any(cs) => cs.iter().for_each(|c| stats_of(c, out)),
            Cond::Not(c) => stats_of(c, out),
            Cond::SameKey(k) => stats_of(&k.cond, out),
            _ => {}
        }
    }
    let mut stats = Vec::new();
    stats_of(cond, &mut stats);
    let mut read: Vec<(usize, Pred)> = stats.iter().flat_map(|&s| b.stats[s].inputs.iter().map(|i| (i.event, i.when.clone()))).collect();
    let types = cond_events(cond, b);
    // Event types the rule reads through the cache, not through a stat: any event of theirs.
    for t in types {
        if !read.iter().any(|(e, _)| *e == t) {
            read.push((t, Pred::always()));
        }
    }
    let inputs: Vec<StatInput> = read
        .into_iter()
        .filter_map(|(event, when)| Some(StatInput { event, when, breaks: None, key: None, value: Some(b.types[event].field(MEMBER_FIELD)?), step: 0 }))
        .collect();
    if inputs.is_empty() {
        return None;
    }
    Some(b.stat(StatKind::Distinct, None, inputs, format!("Contributors|{badge}"), format!("members who contributed toward {badge}")))
}

/// The event types whose arrival can change a condition.
fn cond_events(c: &Cond, b: &Builder) -> Vec<usize> {
    let mut out = Vec::new();
    fn walk(c: &Cond, b: &Builder, out: &mut Vec<usize>) {
        match c {
            Cond::Metric { stat, .. } | Cond::Sequence { stat } | Cond::Keys { stat, .. } => out.extend(b.stats[*stat].inputs.iter().map(|i| i.event)),
            Cond::Ratio { of, to, .. } => out.extend([of, to].iter().flat_map(|s| b.stats[**s].inputs.iter().map(|i| i.event))),
            Cond::Window { reqs, .. } => {
                for r in reqs {
                    out.extend(r.per_type.iter().map(|(ring, _, _)| b.ring_type(*ring)));
                }
            }
            Cond::Recent(r) => out.extend(r.rings.iter().map(|x| b.ring_type(x.ring))),
            Cond::All(cs) | Cond::Any(cs) => cs.iter().for_each(|c| walk(c, b, out)),
            Cond::Not(c) => walk(c, b, out),
            Cond::SameKey(k) => walk(&k.cond, b, out),
            _ => {}
        }
    }
    walk(c, b, &mut out);
    out.sort();
    out.dedup();
    out
}
