//! Consistency tokens (Zanzibar's "zookies"): a write that changes access answers with the
//! stream positions its events reached; a read given that token answers only from an index
//! that has applied them. One process (`pim up`) needs none: its writes answer once every
//! consumer in the process applied them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use tokio::sync::watch;

/// Where a write's token travels beside the answer's body.
pub const TOKEN_HEADER: &str = "x-pim-consistency-token";

/// How long a read given a token waits when the call carries no deadline.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// The longest accepted token: a few streams' positions, never more.
const MAX_TOKEN_LEN: usize = 512;

const VERSION: &str = "v1";

/// A Redis stream entry id (`<ms>-<seq>`), ordered as Redis orders them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    ms: u64,
    seq: u64,
}

impl Position {
    /// Past every entry id of millisecond `ms` (Redis ids begin with their time).
    pub fn after_ms(ms: u64) -> Self {
        Self { ms, seq: u64::MAX }
    }

    /// The entry id `<ms>-<seq>`.
    pub fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// Its millisecond and its sequence number within it.
    pub fn parts(self) -> (u64, u64) {
        (self.ms, self.seq)
    }

    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Stream positions a reader must have applied: for each stream (base name), the entry id.
/// Empty when the write was applied everywhere before it answered (one process).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsistencyToken {
    positions: BTreeMap<String, Position>,
}

impl ConsistencyToken {
    /// A token that asks for nothing: the write was applied before it answered.
    pub fn applied() -> Self {
        Self::default()
    }

    pub fn at(stream: &str, position: Position) -> Self {
        Self {
            positions: BTreeMap::from([(stream.to_owned(), position)]),
        }
    }

    /// Parses a token a client sent; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(format!("is longer than {MAX_TOKEN_LEN} characters"));
        }
        let mut parts = text.split(';');
        if parts.next() != Some(VERSION) {
            return Err("is not a consistency token this suite issued".into());
        }
        let mut token = Self::default();
        for part in parts {
            let position = part
                .split_once('=')
                .and_then(|(stream, id)| Some((stream, Position::parse(id)?)))
                .filter(|(stream, _)| !stream.is_empty());
            let Some((stream, position)) = position else {
                return Err("is not a consistency token this suite issued".into());
            };
            token.require(stream, position);
        }
        Ok(token)
    }

    /// Adds a requirement, keeping the later of two positions on one stream.
    fn require(&mut self, stream: &str, position: Position) {
        let held = self.positions.entry(stream.to_owned()).or_default();
        *held = (*held).max(position);
    }

    /// The token that asks for both: what a client holds after several writes.
    pub fn merge(mut self, other: &ConsistencyToken) -> Self {
        for (stream, position) in &other.positions {
            self.require(stream, *position);
        }
        self
    }

    pub fn positions(&self) -> impl Iterator<Item = (&str, Position)> {
        self.positions.iter().map(|(s, p)| (s.as_str(), *p))
    }
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(VERSION)?;
        for (stream, position) in &self.positions {
            write!(f, ";{stream}={position}")?;
        }
        Ok(())
    }
}

/// Why a read could not be as fresh as its token asked.
#[derive(Debug, PartialEq, Eq)]
pub enum Stale {
    /// The token names a stream this index does not follow.
    Unfollowed(String),
    /// The index had not applied the position when the wait ended.
    Behind {
        stream: String,
        wanted: Position,
        applied: Position,
    },
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stale::Unfollowed(stream) => write!(f, "this service does not follow {stream}"),
            Stale::Behind {
                stream,
                wanted,
                applied,
            } => write!(
                f,
                "this replica has applied {stream} up to {applied}, not yet {wanted}; retry"
            ),
        }
    }
}

/// How far an in-memory index has applied each stream it follows.
pub struct Freshness {
    /// One process: every write was applied before it answered, so any token is met.
    embedded: bool,
    applied: HashMap<&'static str, watch::Sender<Applied>>,
}

/// How far an index has applied a stream: by its tail, entry by entry, and by reading back
/// from the database what every entry up to a time told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Applied {
    tail: Position,
    read_back: Position,
}

impl Applied {
    fn reached(&self) -> Position {
        self.tail.max(self.read_back)
    }
}

impl Freshness {
    /// For an index that applies writes before they answer.
    pub fn embedded() -> Self {
        Self {
            embedded: true,
            applied: HashMap::new(),
        }
    }

    /// For an index following `streams`, each read from the given entry id on (its snapshot
    /// holds everything up to there).
    pub fn following(streams: &[(&'static str, &str)]) -> Self {
        Self {
            embedded: false,
            applied: streams
                .iter()
                .map(|(stream, from)| {
                    let tail = Position::parse(from).unwrap_or_default();
                    (
                        *stream,
                        watch::channel(Applied {
                            tail,
                            ..Applied::default()
                        })
                        .0,
                    )
                })
                .collect(),
        }
    }

    /// Records that the index applied `stream` up to entry `id`, as its tail reads it: in
    /// order, so an earlier id means the tail follows the stream again from its start (Redis
    /// lost it after an entry with an id far ahead was read), and the position goes back with
    /// it; otherwise every token up to that far id would count as met.
    pub fn advance(&self, stream: &str, id: &str) {
        if let (Some(sender), Some(position)) = (self.applied.get(stream), Position::parse(id)) {
            sender.send_if_modified(|held| {
                let moved = position != held.tail;
                held.tail = position;
                moved
            });
        }
    }

    /// Records that the index read back from the database everything the entries of `stream`
    /// up to `position` told (each entry's write committed before its entry was added), for
    /// a reader whose token names an entry this replica's tail never saw (Redis lost it).
    pub fn read_back(&self, stream: &str, position: Position) {
        if let Some(sender) = self.applied.get(stream) {
            sender.send_if_modified(|held| {
                let moved = position > held.read_back;
                held.read_back = held.read_back.max(position);
                moved
            });
        }
    }

    /// The entry id up to which `stream` is applied.
    pub fn applied(&self, stream: &str) -> Option<Position> {
        self.applied.get(stream).map(|s| s.borrow().reached())
    }

    /// Waits (at most `within`) until every position `token` names is applied.
    pub async fn wait(&self, token: &ConsistencyToken, within: Duration) -> Result<(), Stale> {
        if self.embedded {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + within;
        for (stream, wanted) in token.positions() {
            let sender = self
                .applied
                .get(stream)
                .ok_or_else(|| Stale::Unfollowed(stream.to_owned()))?;
            // The usual case, a token already applied, costs one read: no subscription, no timer.
            if sender.borrow().reached() >= wanted {
                continue;
            }
            let mut applied = sender.subscribe();
            let reached = tokio::time::timeout_at(deadline, applied.wait_for(|p| p.reached() >= wanted)).await;
            if !matches!(reached, Ok(Ok(_))) {
                return Err(Stale::Behind {
                    stream: stream.to_owned(),
                    wanted,
                    applied: sender.borrow().reached(),
                });
            }
        }
        Ok(())
    }
}

/// A write's token as its answer's `consistency_token` field: empty when it has none.
pub fn field(token: Option<&ConsistencyToken>) -> String {
    token.map(ToString::to_string).unwrap_or_default()
}

/// A write's answer carrying its consistency token in [`TOKEN_HEADER`] (when it has one).
pub fn answer<T>(message: T, token: Option<&ConsistencyToken>) -> tonic::Response<T> {
    let mut response = tonic::Response::new(message);
    if let Some(value) = token.and_then(|t| t.to_string().parse().ok()) {
        response.metadata_mut().insert(TOKEN_HEADER, value);
    }
    response
}

/// The time left before a call's deadline (its `grpc-timeout` header), if it set one.
pub fn deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_merge_to_the_later_position() {
        let a = ConsistencyToken::at("pim.identity.events", Position::parse("10-2").unwrap());
        let b = ConsistencyToken::at("pim.identity.events", Position::parse("9-7").unwrap()).merge(
            &ConsistencyToken::at("pim.assignment.events", Position::parse("3-0").unwrap()),
        );
        let merged = a.merge(&b);
        let text = merged.to_string();
        assert_eq!(text, "v1;pim.assignment.events=3-0;pim.identity.events=10-2");
        assert_eq!(ConsistencyToken::parse(&text), Ok(merged));
        assert_eq!(ConsistencyToken::parse("v1"), Ok(ConsistencyToken::applied()));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "v2",
            "v1;x",
            "v1;=1-0",
            "v1;s=1",
            "v1;s=a-0",
            &format!("v1;{}", "s".repeat(600)),
        ] {
            assert!(ConsistencyToken::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn a_read_waits_until_the_position_is_applied() {
        let freshness = std::sync::Arc::new(Freshness::following(&[("s", "5-0")]));
        let met = ConsistencyToken::at("s", Position::parse("5-0").unwrap());
        assert_eq!(freshness.wait(&met, Duration::ZERO).await, Ok(()));
        let ahead = ConsistencyToken::at("s", Position::parse("7-1").unwrap());
        assert!(matches!(
            freshness.wait(&ahead, Duration::from_millis(5)).await,
            Err(Stale::Behind { .. })
        ));
        let waiting = {
            let (freshness, ahead) = (freshness.clone(), ahead.clone());
            tokio::spawn(async move { freshness.wait(&ahead, Duration::from_secs(10)).await })
        };
        freshness.advance("s", "7-0");
        freshness.advance("s", "7-1");
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(freshness.applied("s"), Position::parse("7-1"));
        // The tail follows the stream again from its start: the position goes back with it.
        freshness.advance("s", "2-0");
        assert_eq!(freshness.applied("s"), Position::parse("2-0"));
        assert!(matches!(
            freshness.wait(&ahead, Duration::from_millis(5)).await,
            Err(Stale::Behind { .. })
        ));
        let other = ConsistencyToken::at("t", Position::default());
        assert_eq!(
            freshness.wait(&other, Duration::ZERO).await,
            Err(Stale::Unfollowed("t".into()))
        );
        assert_eq!(Freshness::embedded().wait(&ahead, Duration::ZERO).await, Ok(()));

        // Read back from the database through millisecond 7: the token is met, whatever the
        // tail saw, and a later tail going back does not undo it.
        let waiting = {
            let (freshness, ahead) = (freshness.clone(), ahead.clone());
            tokio::spawn(async move { freshness.wait(&ahead, Duration::from_secs(10)).await })
        };
        freshness.read_back("s", Position::after_ms(7));
        assert_eq!(waiting.await.unwrap(), Ok(()));
        freshness.advance("s", "1-0");
        assert_eq!(freshness.wait(&ahead, Duration::ZERO).await, Ok(()));
        freshness.read_back("s", Position::after_ms(6));
        assert_eq!(freshness.applied("s"), Some(Position::after_ms(7)), "never back");
        let later = ConsistencyToken::at("s", Position::parse("8-0").unwrap());
        assert!(freshness.wait(&later, Duration::from_millis(5)).await.is_err());
    }

    #[test]
    fn deadlines_are_read_from_grpc_timeout() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(deadline(&metadata), None);
        metadata.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(deadline(&metadata), Some(Duration::from_millis(250)));
        metadata.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(deadline(&metadata), Some(Duration::from_secs(3)));
        metadata.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(deadline(&metadata), None);
    }
}
