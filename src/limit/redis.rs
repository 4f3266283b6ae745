//! GCRA in Redis, on Redis's own clock (`TIME`), so every replica counts against the same
//! theoretical arrival time whatever its own clock says. Keys expire when their state has fully
//! decayed, so Redis holds no idle key. When Redis cannot answer (down, slow, breaker open), the
//! limit's fallback decides.
//!
//! Decisions are batched: the checks that arrive while the batcher waits for its turn on a
//! worker thread go to Redis as one `EVALSHA` of one script that decides each in arrival order
//! (one round trip, one answer); a key asked several times goes once with a count. A check that
//! finds no other waiting or in flight skips the batcher and makes its own call, so at low load a
//! decision is one hand-off to the Redis connection and back, not three task hand-offs more.
//! Under load one call carries many, which saves most of the per-call cost on both sides
//! (callgrind: the Redis limit cost ward ~12,000 instructions per request with one call per
//! decision, ~2,300 batched; Redis's own CPU per request fell from ~17 to ~4-6 µs,
//! bench/results/proxy-redis-batch.txt). On a Redis Cluster each decision is its own call: one
//! script's keys must share a slot.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{gcra_step, Checked, Decision, Fallback, MemoryLimiter, Quota, Source, Unavailable};
use crate::policy::RedisTuning;
use crate::redis_link::{LuaScript, RedisLink, RedisTarget};

/// KEYS[i]: a limit's key; ARGV[3i-2], ARGV[3i-1]: its emission interval and period
/// (microseconds); ARGV[3i]: how many requests to decide for it, in turn (a key that several
/// waiting checks share is read and written once). Returns Redis's time and each key's stored
/// theoretical arrival time as read (the time when none): the caller runs the same steps to
/// know each decision (`gcra_step`), so the answer is one number per key, not four per request.
/// Numbers are formatted with %d before they are stored: Lua's default conversion keeps 14
/// digits, and these have 16.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {now}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[3 * i - 2])
  local period = tonumber(ARGV[3 * i - 1])
  local stored = tonumber(redis.call('GET', key))
  local tat = stored or now
  out[i + 1] = tat
  for _ = 1, tonumber(ARGV[3 * i]) do
    if tat < now then tat = now end
    if tat + interval - now <= period then tat = tat + interval end
  end
  if tat ~= stored and tat > now then
    redis.call('SET', key, string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
  end
end
return out
"#;

/// The most decisions one call carries (the script holds Redis for ~1 µs per key).
const MAX_BATCH: usize = 64;
/// Checks waiting for a batch; when full, a check is an outage (its fallback decides) rather
/// than a wait: the queue is bounded under any load.
const QUEUE: usize = 4096;

/// One check waiting for its batch.
struct Ask {
    key: String,
    interval: u64,
    period: u64,
    tuning: RedisTuning,
    reply: oneshot::Sender<Result<Decision, String>>,
}

pub struct RedisLimiter {
    link: Arc<RedisLink>,
    script: Arc<LuaScript>,
    /// The batcher's queue; `None` on a Cluster (one call per decision).
    batches: Option<mpsc::Sender<Ask>>,
    /// Checks sent to Redis and not yet answered (queued, batched or alone).
    pending: AtomicUsize,
    /// Decides alone while Redis is unavailable (`Fallback::Local`).
    local: MemoryLimiter,
}

impl RedisLimiter {
    /// Starts the batcher (single node); needs a tokio runtime. It stops when the limiter drops.
    pub fn new(link: Arc<RedisLink>, local: MemoryLimiter) -> RedisLimiter {
        RedisLimiter::with_queue(link, local, QUEUE)
    }

    /// `new` with room for `queue` waiting checks instead of 4,096 (tests fill it).
    pub fn with_queue(link: Arc<RedisLink>, local: MemoryLimiter, queue: usize) -> RedisLimiter {
        let script = Arc::new(LuaScript::new(GCRA));
        let batches = match link.target() {
            RedisTarget::Single(_) => {
                let (tx, rx) = mpsc::channel(queue);
                tokio::spawn(batcher(link.clone(), script.clone(), rx));
                Some(tx)
            }
            RedisTarget::Cluster(_) => None,
        };
        RedisLimiter {
            link,
            script,
            batches,
            pending: AtomicUsize::new(0),
            local,
        }
    }

    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    pub fn local(&self) -> &MemoryLimiter {
        &self.local
    }

    pub async fn check(
        &self,
        key: &str,
        quota: Quota,
        fallback: Fallback,
        tuning: &RedisTuning,
    ) -> Result<Checked, Unavailable> {
        let interval = quota.emission_interval().as_micros().max(1) as u64;
        let period = quota.period.as_micros() as u64;
        let redis_key = self.link.key("rl", key);
        let answer = match &self.batches {
            Some(queue) => {
                let pending = Pending::count(&self.pending);
                if pending.first {
                    // Nothing waiting or in flight: a batch would be this check alone.
                    self.link.observe_batch(1);
                    self.alone(&redis_key, interval, period, tuning).await
                } else {
                    let (reply, answer) = oneshot::channel();
                    let ask = Ask {
                        key: redis_key,
                        interval,
                        period,
                        tuning: *tuning,
                        reply,
                    };
                    match queue.try_send(ask) {
                        // The batcher answers every ask it takes, within the call's deadline.
                        Ok(()) => answer
                            .await
                            .unwrap_or_else(|_| Err("the rate-limit batcher stopped".into())),
                        Err(_) => {
                            self.link.count_error("rate_limit", "queue_full");
                            Err("the rate-limit queue is full".into())
                        }
                    }
                }
            }
            None => self.alone(&redis_key, interval, period, tuning).await,
        };
        match answer {
            Ok(decision) => Ok(Checked {
                decision,
                source: Source::Redis,
            }),
            Err(why) => {
                tracing::debug!(error = why.as_str(), "Redis rate limit unavailable");
                match fallback {
                    Fallback::Local { share } => {
                        let limit = ((f64::from(quota.limit) * share).floor() as u32).max(1);
                        Ok(Checked {
                            decision: self.local.check(
                                key,
                                Quota {
                                    limit,
                                    period: quota.period,
                                },
                            ),
                            source: Source::LocalFallback,
                        })
                    }
                    Fallback::Deny => Err(Unavailable {
                        retry_after: tuning.breaker_cooldown.max(Duration::from_secs(1)),
                    }),
                }
            }
        }
    }

    /// One decision in its own call, made by the checking task itself.
    async fn alone(
        &self,
        key: &str,
        interval: u64,
        period: u64,
        tuning: &RedisTuning,
    ) -> Result<Decision, String> {
        let args = [interval, period, 1];
        let (now, tats) = decide(&self.link, &self.script, &[key], &args, tuning).await?;
        Ok(gcra_step(tats[0], now, interval, period, 1_000).1)
    }
}

/// One check counted in `RedisLimiter::pending` until it is answered or dropped.
struct Pending<'a> {
    count: &'a AtomicUsize,
    /// No other check was waiting or in flight when this one was counted.
    first: bool,
}

impl<'a> Pending<'a> {
    fn count(count: &'a AtomicUsize) -> Pending<'a> {
        let first = count.fetch_add(1, Ordering::AcqRel) == 0;
        Pending { count, first }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes the asks waiting, sends them as one call, and goes back for more while that call is
/// in flight (each batch is its own task, so a slow call holds up no later batch).
async fn batcher(link: Arc<RedisLink>, script: Arc<LuaScript>, mut queue: mpsc::Receiver<Ask>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return; // the limiter is gone
        }
        if batch.len() < MAX_BATCH {
            // Let this worker run the tasks already woken (other requests reaching their check)
            // before the call leaves: under load they join it; alone, the wait is nothing.
            tokio::task::yield_now().await;
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(ask) => batch.push(ask),
                    Err(_) => break,
                }
            }
        }
        let asks = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        tokio::spawn(answer(link.clone(), script.clone(), asks));
    }
}

/// One call for the batch; every ask gets its own decision or the call's failure. Asks for the
/// same key and quota go as one key with a count (decided in arrival order).
async fn answer(link: Arc<RedisLink>, script: Arc<LuaScript>, asks: Vec<Ask>) {
    link.observe_batch(asks.len());
    // groups[g]: the first ask of group g and its size; group_of[i]: ask i's group.
    let mut groups: Vec<(usize, u64)> = Vec::with_capacity(asks.len());
    let mut group_of = Vec::with_capacity(asks.len());
    for (i, ask) in asks.iter().enumerate() {
        let same = |&(first, _): &(usize, u64)| {
            let f: &Ask = &asks[first];
            f.key == ask.key && f.interval == ask.interval && f.period == ask.period
        };
        match groups.iter().position(same) {
            Some(g) => {
                groups[g].1 += 1;
                group_of.push(g);
            }
            None => {
                group_of.push(groups.len());
                groups.push((i, 1));
            }
        }
    }
    let keys: Vec<&str> = groups.iter().map(|&(f, _)| asks[f].key.as_str()).collect();
    let args: Vec<u64> = groups
        .iter()
        .flat_map(|&(f, n)| [asks[f].interval, asks[f].period, n])
        .collect();
    match decide(&link, &script, &keys, &args, &asks[0].tuning).await {
        Ok((now, mut tats)) => {
            // Each group's steps, in arrival order, from the time the script read.
            for (ask, g) in asks.into_iter().zip(group_of) {
                let (tat, decision) = gcra_step(tats[g], now, ask.interval, ask.period, 1_000);
                tats[g] = tat;
                let _ = ask.reply.send(Ok(decision));
            }
        }
        Err(why) => {
            for ask in asks {
                let _ = ask.reply.send(Err(why.clone()));
            }
        }
    }
}

/// Runs the script on `keys` (interval, period and count for each in `args`): Redis's time and
/// each key's stored arrival time, both in microseconds.
async fn decide(
    link: &RedisLink,
    script: &LuaScript,
    keys: &[&str],
    args: &[u64],
    tuning: &RedisTuning,
) -> Result<(u64, Vec<u64>), String> {
    let answer: Vec<i64> = link
        .eval("rate_limit", script, keys, args, tuning)
        .await
        .map_err(|e| e.to_string())?;
    decode(answer, keys.len())
}

/// The time and one arrival time per key, none negative; anything else is a broken answer (an
/// outage, not a decision).
fn decode(answer: Vec<i64>, keys: usize) -> Result<(u64, Vec<u64>), String> {
    if answer.len() != keys + 1 {
        return Err(format!(
            "unexpected GCRA answer of {} values for {keys} keys",
            answer.len()
        ));
    }
    let mut numbers = answer.into_iter().map(u64::try_from);
    let now = numbers.next().and_then(Result::ok).filter(|&t| t > 0);
    let tats: Result<Vec<u64>, _> = numbers.collect();
    match (now, tats) {
        (Some(now), Ok(tats)) => Ok((now, tats)),
        _ => Err("unexpected GCRA answer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_time_and_one_sane_number_per_key_are_an_answer() {
        assert_eq!(decode(vec![5, 7, 5], 2).unwrap(), (5, vec![7, 5]));
        assert!(decode(vec![5, 7], 2).is_err(), "a key short");
        assert!(decode(vec![5, 7, 8, 9], 2).is_err(), "a number too many");
        assert!(decode(vec![0, 7], 1).is_err(), "no time");
        assert!(decode(vec![5, -1], 1).is_err(), "a negative arrival time");
    }

    /// Redis's answer (the time, a stored arrival time) gives the decisions the script took:
    /// 5 per 15 minutes, two already spent, three more asked at once.
    #[test]
    fn steps_from_the_stored_arrival_time_decide_in_turn() {
        let (interval, period) = (180_000_000, 900_000_000); // microseconds
        let now = 1_000_000_000;
        let mut tat = now + 2 * interval;
        let mut remaining = Vec::new();
        for _ in 0..4 {
            let (t, d) = gcra_step(tat, now, interval, period, 1_000);
            tat = t;
            remaining.push(d.allowed.then_some(d.remaining));
            if !d.allowed {
                assert_eq!(d.retry_after, Duration::from_secs(180));
                assert_eq!(d.reset_after, Duration::from_secs(900));
            }
        }
        assert_eq!(remaining, [Some(2), Some(1), Some(0), None]);
    }
}
