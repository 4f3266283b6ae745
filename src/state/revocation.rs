//! Revocation: by token id (`jti`), by session (`sid`, the refresh-token family) and by subject
//! ("every token of this subject issued before T"). Every check reads an in-process copy, so it
//! costs a hash lookup, never a network round trip.
//!
//! With Redis, revocations are members of one sorted set (`<prefix>:rev:{all}`, scored by when
//! the entry may be forgotten: the longest remaining token life), and each new one is published
//! on `<prefix>:rev:events`. Every replica subscribes, then loads the whole set, so it misses
//! nothing between the two; it loads it again after every reconnect. A revocation thus reaches
//! every replica within the publish latency (well under a second). Until a replica has loaded
//! the set once (Redis down at start), its copy is *unsynced*, and the policy decides whether
//! requests wait (`fail_closed`, 503) or pass (`fail_open`, counted). Once synced, a lost
//! connection keeps the copy serving (it is stale only for revocations made during the outage,
//! which arrive with the reload after reconnecting).
//!
//! With memory, the copy is the whole truth, and the bundled payments service in the same
//! process (`ward demo`) revokes into it directly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;

use crate::identity::Principal;
use crate::policy::RedisTuning;
use crate::redis_link::{RedisFault, RedisLink};

/// What is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One token, by `jti`.
    Token,
    /// Every token of a session (refresh-token family), by `sid`.
    Session,
    /// Every token of a subject issued before a time.
    Subject,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::Session => "session",
            Kind::Subject => "subject",
        }
    }

    fn tag(self) -> char {
        match self {
            Kind::Token => 't',
            Kind::Session => 's',
            Kind::Subject => 'u',
        }
    }

    fn from_tag(c: &str) -> Option<Kind> {
        match c {
            "t" => Some(Kind::Token),
            "s" => Some(Kind::Session),
            "u" => Some(Kind::Subject),
            _ => None,
        }
    }
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub kind: Kind,
    pub id: String,
    /// For `Subject`: tokens issued (`iat`) before this unix second are revoked.
    pub before: Option<i64>,
    /// Unix second after which the entry may be forgotten (no token it revokes is still valid).
    pub expires_at: i64,
}

/// Longest id accepted (jti, sid, subject).
pub const MAX_ID: usize = 256;

impl Entry {
    /// The sorted-set member: `<tag>|<before or ->|<id>` (the id last: it may hold `|`).
    fn member(&self) -> String {
        let before = self.before.map_or("-".to_owned(), |b| b.to_string());
        format!("{}|{before}|{}", self.kind.tag(), self.id)
    }

    fn from_member(member: &str, expires_at: i64) -> Option<Entry> {
        let mut parts = member.splitn(3, '|');
        let kind = Kind::from_tag(parts.next()?)?;
        let before = match parts.next()? {
            "-" => None,
            b => Some(b.parse().ok()?),
        };
        let id = parts.next()?;
        if id.is_empty() || id.len() > MAX_ID || (kind == Kind::Subject) != before.is_some() {
            return None;
        }
        Some(Entry {
            kind,
            id: id.to_owned(),
            before,
            expires_at,
        })
    }

    /// The pub/sub message: `<expires_at> <member>`.
    fn message(&self) -> String {
        format!("{} {}", self.expires_at, self.member())
    }

    fn from_message(msg: &str) -> Option<Entry> {
        let (exp, member) = msg.split_once(' ')?;
        Entry::from_member(member, exp.parse().ok()?)
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Clear,
    Revoked(Kind),
    /// The copy has never been loaded from Redis.
    Unsynced,
}

#[derive(Default)]
struct Copy {
    tokens: HashMap<String, i64>,
    sessions: HashMap<String, i64>,
    /// subject → (revoked before, expires at)
    subjects: HashMap<String, (i64, i64)>,
}

impl Copy {
    fn add(&mut self, e: &Entry) {
        let keep_later = |old: Option<&i64>| old.map_or(e.expires_at, |o| (*o).max(e.expires_at));
        match e.kind {
            Kind::Token => {
                let exp = keep_later(self.tokens.get(&e.id));
                self.tokens.insert(e.id.clone(), exp);
            }
            Kind::Session => {
                let exp = keep_later(self.sessions.get(&e.id));
                self.sessions.insert(e.id.clone(), exp);
            }
            Kind::Subject => {
                let before = e.before.unwrap_or(i64::MAX);
                let (b, x) = self
                    .subjects
                    .get(&e.id)
                    .copied()
                    .unwrap_or((i64::MIN, i64::MIN));
                self.subjects
                    .insert(e.id.clone(), (b.max(before), x.max(e.expires_at)));
            }
        }
    }

    fn prune(&mut self, now: i64) {
        self.tokens.retain(|_, exp| *exp > now);
        self.sessions.retain(|_, exp| *exp > now);
        self.subjects.retain(|_, (_, exp)| *exp > now);
    }

    fn len(&self) -> usize {
        self.tokens.len() + self.sessions.len() + self.subjects.len()
    }

    fn entries(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .tokens
            .iter()
            .map(|(id, exp)| (Kind::Token, id, None, *exp))
            .chain(
                self.sessions
                    .iter()
                    .map(|(id, exp)| (Kind::Session, id, None, *exp)),
            )
            .chain(
                self.subjects
                    .iter()
                    .map(|(id, (b, exp))| (Kind::Subject, id, Some(*b), *exp)),
            )
            .map(|(kind, id, before, expires_at)| Entry {
                kind,
                id: id.clone(),
                before,
                expires_at,
            })
            .collect();
        out.sort_by(|a, b| (a.kind.as_str(), &a.id).cmp(&(b.kind.as_str(), &b.id)));
        out
    }
}

/// Metric handles.
#[derive(Clone)]
pub struct RevocationMetrics {
    /// Revocations held in the in-process copy.
    pub entries: prometheus::IntGauge,
    /// 1 while the copy is loaded and subscribed, 0 otherwise.
    pub synced: prometheus::IntGauge,
    /// `{kind}`: requests refused because their token was revoked.
    pub hits: prometheus::IntCounterVec,
    /// Full loads of the set from Redis (start and every reconnect).
    pub resyncs: prometheus::IntCounter,
    /// Pub/sub messages that did not parse (ignored).
    pub bad_messages: prometheus::IntCounter,
    /// Requests let through while the copy was unsynced (`fail_open`).
    pub unsynced_passes: prometheus::IntCounter,
}

enum Backend {
    Memory,
    Redis {
        link: Arc<RedisLink>,
        key: String,
        channel: String,
    },
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("backend", &self.backend_name())
            .field("synced", &self.is_synced())
            .finish_non_exhaustive()
    }
}

pub struct Revocations {
    copy: RwLock<Copy>,
    /// Loaded at least once (always true for memory).
    synced: AtomicBool,
    backend: Backend,
    pub metrics: RevocationMetrics,
}

/// Deadline of the calls the sync task and the publishers make.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

impl Revocations {
    pub fn memory(metrics: RevocationMetrics) -> Arc<Revocations> {
        metrics.synced.set(1);
        Arc::new(Revocations {
            copy: RwLock::default(),
            synced: AtomicBool::new(true),
            backend: Backend::Memory,
            metrics,
        })
    }

    /// The Redis backend; call [`Revocations::sync`] in a task to keep the copy current
    /// (publishers that never check, like the payments service, need not).
    pub fn redis(link: Arc<RedisLink>, metrics: RevocationMetrics) -> Arc<Revocations> {
        metrics.synced.set(0);
        Arc::new(Revocations {
            copy: RwLock::default(),
            synced: AtomicBool::new(false),
            backend: Backend::Redis {
                key: link.key("rev", "all"),
                channel: format!("{}:rev:events", link.prefix()),
                link,
            },
            metrics,
        })
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn backend_name(&self) -> String {
        match &self.backend {
            Backend::Memory => "memory".into(),
            Backend::Redis { link, .. } => format!("redis {}", link.target()),
        }
    }

    /// Is this caller's token revoked? `now` is unix seconds.
    pub fn check(&self, p: &Principal, now: i64) -> Verdict {
        if !self.is_synced() {
            return Verdict::Unsynced;
        }
        let copy = self.copy.read().expect("revocation copy lock");
        if copy.tokens.is_empty() && copy.sessions.is_empty() && copy.subjects.is_empty() {
            return Verdict::Clear;
        }
        let live = |exp: Option<&i64>| exp.is_some_and(|e| *e > now);
        if p.token_id
            .as_ref()
            .is_some_and(|j| live(copy.tokens.get(j)))
        {
            return Verdict::Revoked(Kind::Token);
        }
        if p.session
            .as_ref()
            .is_some_and(|s| live(copy.sessions.get(s)))
        {
            return Verdict::Revoked(Kind::Session);
        }
        if let Some((before, exp)) = copy.subjects.get(&p.subject) {
            // A token without `iat` cannot show it came after the revocation.
            if *exp > now && p.issued_at.is_none_or(|iat| iat < *before) {
                return Verdict::Revoked(Kind::Subject);
            }
        }
        Verdict::Clear
    }

    /// Records a revocation here at once and, with Redis, for every replica.
    pub async fn revoke(&self, e: Entry) -> Result<(), RedisFault> {
        if let Backend::Redis { link, key, channel } = &self.backend {
            let tuning = call_tuning();
            let mut add = redis::cmd("ZADD");
            add.arg(key).arg(e.expires_at).arg(e.member());
            link.run::<i64>("revocation", &add, &tuning).await?;
            let mut prune = redis::cmd("ZREMRANGEBYSCORE");
            prune.arg(key).arg("-inf").arg(super::now_secs());
            link.run::<i64>("revocation", &prune, &tuning).await?;
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(channel).arg(e.message());
            link.run::<i64>("revocation", &publish, &tuning).await?;
        }
        self.add_local(&e);
        Ok(())
    }

    fn add_local(&self, e: &Entry) {
        let mut copy = self.copy.write().expect("revocation copy lock");
        copy.add(e);
        self.metrics.entries.set(copy.len() as i64);
    }

    /// Every live revocation in the copy.
    pub fn list(&self) -> Vec<Entry> {
        let mut copy = self.copy.write().expect("revocation copy lock");
        copy.prune(super::now_secs());
        self.metrics.entries.set(copy.len() as i64);
        copy.entries()
    }

    /// Keeps the copy current from Redis: subscribe, load the set, apply messages; again after
    /// every disconnect, with backoff. Prunes expired entries meanwhile. Runs until aborted;
    /// returns at once for the memory backend.
    pub async fn sync(self: Arc<Self>) {
        let Backend::Redis { link, key, channel } = &self.backend else {
            return;
        };
        let mut wait = Duration::from_millis(100);
        let mut node = 0;
        loop {
            match self.sync_once(link, key, channel, node).await {
                Ok(()) => tracing::warn!("revocation subscription ended; reconnecting"),
                Err(e) => tracing::warn!(error = %e, retry_in = ?wait, "revocation sync failed"),
            }
            self.metrics.synced.set(0);
            node += 1;
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    async fn sync_once(
        &self,
        link: &RedisLink,
        key: &str,
        channel: &str,
        node: usize,
    ) -> Result<(), RedisFault> {
        let client = link.node_client(node)?;
        let mut pubsub = tokio::time::timeout(CALL_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| RedisFault::Timeout(CALL_TIMEOUT))??;
        tokio::time::timeout(CALL_TIMEOUT, pubsub.subscribe(channel))
            .await
            .map_err(|_| RedisFault::Timeout(CALL_TIMEOUT))??;
        // Subscribed first, loaded second: nothing published in between is missed.
        let mut load = redis::cmd("ZRANGEBYSCORE");
        load.arg(key)
            .arg(super::now_secs())
            .arg("+inf")
            .arg("WITHSCORES");
        let members: Vec<(String, i64)> =
            link.run("revocation_sync", &load, &call_tuning()).await?;
        let mut fresh = Copy::default();
        for (m, exp) in &members {
            match Entry::from_member(m, *exp) {
                Some(e) => fresh.add(&e),
                None => self.metrics.bad_messages.inc(),
            }
        }
        {
            let mut copy = self.copy.write().expect("revocation copy lock");
            *copy = fresh;
            self.metrics.entries.set(copy.len() as i64);
        }
        self.synced.store(true, Ordering::Release);
        self.metrics.synced.set(1);
        self.metrics.resyncs.inc();
        tracing::info!(revocations = members.len(), "revocations loaded from Redis");
        let mut messages = pubsub.on_message();
        let mut prune = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let parsed = msg
                        .get_payload::<String>()
                        .ok()
                        .and_then(|p| Entry::from_message(&p));
                    match parsed {
                        Some(e) => self.add_local(&e),
                        None => self.metrics.bad_messages.inc(),
                    }
                }
                _ = prune.tick() => {
                    let mut copy = self.copy.write().expect("revocation copy lock");
                    copy.prune(super::now_secs());
                    self.metrics.entries.set(copy.len() as i64);
                }
            }
        }
    }
}

fn call_tuning() -> RedisTuning {
    RedisTuning {
        timeout: CALL_TIMEOUT,
        breaker_failures: u32::MAX,
        breaker_cooldown: Duration::from_secs(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AuthMethod;

    fn metrics() -> RevocationMetrics {
        RevocationMetrics {
            entries: prometheus::IntGauge::new("e", "e").unwrap(),
            synced: prometheus::IntGauge::new("s", "s").unwrap(),
            hits: prometheus::IntCounterVec::new(prometheus::Opts::new("h", "h"), &["kind"])
                .unwrap(),
            resyncs: prometheus::IntCounter::new("r", "r").unwrap(),
            bad_messages: prometheus::IntCounter::new("b", "b").unwrap(),
            unsynced_passes: prometheus::IntCounter::new("u", "u").unwrap(),
        }
    }

    fn caller(jti: &str, sid: &str, sub: &str, iat: i64) -> Principal {
        Principal {
            subject: sub.into(),
            tenant: None,
            roles: vec![],
            scopes: vec![],
            session: Some(sid.into()),
            token_id: Some(jti.into()),
            issued_at: Some(iat),
            expires_at: Some(iat + 900),
            method: AuthMethod::Jwt { issuer: "i".into() },
            claims: Arc::default(),
        }
    }

    #[test]
    fn members_and_messages_round_trip_and_garbage_is_refused() {
        let e = Entry {
            kind: Kind::Subject,
            id: "user|with|bars".into(),
            before: Some(1700),
            expires_at: 9000,
        };
        assert_eq!(Entry::from_member(&e.member(), 9000), Some(e.clone()));
        assert_eq!(Entry::from_message(&e.message()), Some(e));
        for bad in [
            "",
            "9000",
            "9000 x|-|id",
            "9000 t|12|id",
            "9000 u|-|id",
            "x t|-|id",
            "9000 t|-|",
        ] {
            assert_eq!(Entry::from_message(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn tokens_sessions_and_subjects_are_revoked_until_they_expire() {
        let r = Revocations::memory(metrics());
        let p = caller("j1", "s1", "alice", 1000);
        assert_eq!(r.check(&p, 1000), Verdict::Clear);
        for (kind, id, before) in [
            (Kind::Token, "j1", None),
            (Kind::Session, "s1", None),
            (Kind::Subject, "alice", Some(1001)),
        ] {
            let r = Revocations::memory(metrics());
            r.revoke(Entry {
                kind,
                id: id.into(),
                before,
                expires_at: 2000,
            })
            .await
            .unwrap();
            assert_eq!(r.check(&p, 1500), Verdict::Revoked(kind), "{kind:?}");
            assert_eq!(r.check(&p, 2000), Verdict::Clear, "{kind:?} expired");
        }
        // A subject revocation spares tokens issued at or after its time.
        let far = crate::state::now_secs() + 600;
        r.revoke(Entry {
            kind: Kind::Subject,
            id: "alice".into(),
            before: Some(1000),
            expires_at: far,
        })
        .await
        .unwrap();
        assert_eq!(r.check(&p, 1500), Verdict::Clear);
        assert_eq!(
            r.check(&caller("j2", "s2", "alice", 999), 1500),
            Verdict::Revoked(Kind::Subject)
        );
        assert_eq!(r.list().len(), 1);
    }
}
