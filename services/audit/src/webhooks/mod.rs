//! Webhooks: what audit records, pushed to subscribers' URLs as CloudEvents 1.0 (JSON),
//! signed as the Standard Webhooks specification says. A record's deliveries are stored in
//! the transaction that stores the record, so a crash loses none; each subscription gets its
//! deliveries one at a time in record order (a failing receiver holds back only its own),
//! retried with exponential backoff for 24 hours, then dead-lettered with an event alerting
//! raises an alert on.

mod dispatch;
mod http;
pub(crate) mod store;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub(crate) use dispatch::Dispatcher;

use crate::chain::Record;
use pim_runtime::events::EventType;

/// How long delivered and dead deliveries are kept (their history).
pub const KEPT_FOR_MS: i64 = 7 * 24 * 3600 * 1000;
/// How long an old secret keeps signing beside a rotated one.
pub const ROTATION_OVERLAP_MS: i64 = 24 * 3600 * 1000;

const SEVERITIES: &[&str] = &["low", "medium", "high", "critical"];

/// A subscription as stored: where, what, and which secret generation signs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Subscription {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub role_ids: Vec<String>,
    pub group_ids: Vec<String>,
    pub min_severity: String,
    pub description: String,
    pub created_at: i64,
    pub created_by: String,
    pub generation: i64,
    /// Until when the previous generation's secret signs too (0: not at all).
    pub previous_until: i64,
    /// When a delivery was given up: nothing is queued for it until it is resumed.
    pub suspended_at: Option<i64>,
    /// Set for a Shared Signals stream: its events are SETs (CAEP), `event_types` the event
    /// types it asked for, and `url` where they are pushed (empty when polled).
    pub stream: Option<crate::ssf::Stream>,
}

impl Subscription {
    /// Whether this record is one the subscriber asked for.
    pub fn wants(&self, r: &Record) -> bool {
        if let Some(stream) = &self.stream {
            return stream.status != crate::ssf::StreamStatus::Disabled
                && crate::ssf::signal(r)
                    .is_some_and(|(event_type, _)| self.event_types.iter().any(|t| t == event_type));
        }
        let short = r.action.rsplit('.').next().unwrap_or_default();
        let typed = self.event_types.is_empty() || self.event_types.iter().any(|t| t == &r.action || t == short);
        let role = self.role_ids.is_empty() || self.role_ids.contains(&r.role_id);
        let group = self.group_ids.is_empty()
            || self
                .group_ids
                .iter()
                .any(|g| r.target_id == *g || pim_proto::catalogue::group_of_scope(&r.scope) == Some(g.as_str()));
        let severe = self.min_severity.is_empty() || {
            let severity = serde_json::from_str::<serde_json::Value>(&r.payload_json)
                .ok()
                .and_then(|p| p["severity"].as_str().map(str::to_owned))
                .unwrap_or_default();
            rank(&severity).is_some_and(|s| rank(&self.min_severity).is_some_and(|min| s >= min))
        };
        typed && role && group && severe
    }

    /// The URL as records, events and alerts show it: its origin only (scheme, host, port),
    /// since chat-style hooks carry their token in the path or the query.
    pub fn url_shown(&self) -> String {
        shown_url(&self.url)
    }
}

fn rank(severity: &str) -> Option<usize> {
    SEVERITIES.iter().position(|s| *s == severity)
}

/// A URL's origin: scheme, host and port, without path, query or fragment.
pub fn shown_url(url: &str) -> String {
    match url.parse::<::http::Uri>() {
        Ok(uri) => format!(
            "{}://{}",
            uri.scheme_str().unwrap_or_default(),
            uri.authority()
                .map(|a| a.as_str().rsplit('@').next().unwrap_or_default())
                .unwrap_or_default()
        ),
        Err(_) => String::new(),
    }
}

/// Why a subscription's settings are refused, naming the field.
#[derive(Debug, PartialEq)]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

/// Checks a subscription's settings at the edge: an https:// URL (http:// only to a loopback
/// address), without credentials in it; bounded lists of plain names, the event types among
/// those PIM publishes; a known severity.
pub fn validate(s: &Subscription) -> Result<(), Invalid> {
    let uri: ::http::Uri = s.url.parse().map_err(|_| invalid("url", "is not a URL"))?;
    let host = uri.host().ok_or_else(|| invalid("url", "has no host"))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(invalid(
            "url",
            "must not hold credentials: the signature authenticates PIM",
        ));
    }
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback(host) => {}
        Some("http") => return Err(invalid("url", "must be https:// (http:// only to a loopback address)")),
        _ => return Err(invalid("url", "must be an https:// URL")),
    }
    if s.url.len() > 2048 {
        return Err(invalid("url", "must be at most 2048 characters"));
    }
    let names_ok = |names: &[String]| {
        names.len() <= 100
            && names
                .iter()
                .all(|n| !n.is_empty() && n.len() <= 256 && n.chars().all(|c| c.is_ascii_graphic()))
    };
    if !names_ok(&s.event_types) {
        return Err(invalid(
            "event_types",
            "at most 100 event type names, each 1 to 256 visible ASCII characters",
        ));
    }
    // A stream's are the CAEP event types it asked for, checked where it is made.
    if s.stream.is_none()
        && let Some(unknown) = s.event_types.iter().find(|t| !is_delivered(t))
    {
        return Err(invalid(
            "event_types",
            format!("{unknown} is not an event type PIM delivers (`pim webhooks event-types` lists them)"),
        ));
    }
    if !names_ok(&s.role_ids) {
        return Err(invalid(
            "role_ids",
            "at most 100 role ids, each 1 to 256 visible ASCII characters",
        ));
    }
    if !names_ok(&s.group_ids) {
        return Err(invalid(
            "group_ids",
            "at most 100 group ids, each 1 to 256 visible ASCII characters",
        ));
    }
    if !s.min_severity.is_empty() && rank(&s.min_severity).is_none() {
        return Err(invalid("min_severity", "must be low, medium, high or critical"));
    }
    // Shown to operators (a table, a page): one line, no control characters.
    pim_runtime::text::one_line(&s.description, 1024).map_err(|why| invalid("description", why))?;
    Ok(())
}

/// Whether a subscription naming `name` (short or full) receives anything.
fn is_delivered(name: &str) -> bool {
    EventType::is_published(name)
        && EventType::parse(name.rsplit('.').next().unwrap_or_default()).is_some_and(EventType::is_recorded)
}

/// Which addresses a delivery may go to: an administrator's webhook anywhere it names; a
/// Shared Signals receiver's stream (an app's choice) only to public ones, unless the
/// operator allows private ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    Any,
    /// Not loopback, private, link-local, shared (CGNAT), unspecified, multicast or
    /// broadcast: checked on the URL when the stream is made, and on every address its name
    /// resolves to when it is sent to.
    Public,
}

impl Reach {
    /// Where Shared Signals receivers' streams may push: public addresses, or anywhere where
    /// the operator allows private ones.
    pub fn of_receivers(private_allowed: bool) -> Self {
        if private_allowed { Self::Any } else { Self::Public }
    }

    /// Whether a delivery may connect to `ip`.
    pub fn allows(self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        if self == Self::Any {
            return true;
        }
        // An IPv6 address that carries an IPv4 one (mapped, compatible, NAT64, 6to4) is
        // judged by the IPv4 address it reaches.
        let ip = match ip {
            IpAddr::V6(v6) => {
                let embedded =
                    |hi: u16, lo: u16| IpAddr::V4(std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
                match v6.segments() {
                    [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] | [0x64, 0xff9b, 1, _, _, _, hi, lo] => embedded(hi, lo),
                    [0x2002, hi, lo, ..] => embedded(hi, lo),
                    _ => v6.to_ipv4().map_or(IpAddr::V6(v6), IpAddr::V4),
                }
            }
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                !(v4.is_loopback()
                    || v4.is_private()
                    || v4.is_link_local()
                    || v4.is_unspecified()
                    || v4.is_multicast()
                    || v4.is_broadcast()
                    || v4.is_documentation()
                    || a == 0
                    || a >= 240
                    || (a == 100 && (64..128).contains(&b))
                    || (a == 198 && (18..20).contains(&b))
                    || (a == 192 && b == 0 && v4.octets()[2] == 0))
            }
            IpAddr::V6(v6) => {
                let first = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80
                    || (first & 0xffc0) == 0xfec0)
            }
        }
    }

    /// Checks a stream's push URL: for public reach, https:// to a name or a public address.
    pub fn check_url(self, url: &str) -> Result<(), Invalid> {
        if self == Self::Any {
            return Ok(());
        }
        let uri: ::http::Uri = url.parse().map_err(|_| invalid("url", "is not a URL"))?;
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let private = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => !self.allows(ip),
            Err(_) => {
                let name = host.trim_end_matches('.').to_ascii_lowercase();
                name == "localhost" || name.ends_with(".localhost")
            }
        };
        if uri.scheme_str() != Some("https") || private {
            return Err(invalid(
                "url",
                "must be an https:// URL of a public address (the operator may allow private ones: PIM_SSF_PRIVATE_RECEIVERS)",
            ));
        }
        Ok(())
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The subscriptions' signing secrets, derived from the suite's key: never stored, so a copy
/// of the database alone signs nothing. Each rotation is a new generation.
///
/// The suite's key rotates too (`PIM_SECRETS_KEY_PREVIOUS`): while the keys it replaced are
/// given, each delivery is signed under them as well, so that receivers keep verifying with
/// the secrets they hold until each subscription's secret is rotated and shown again.
#[derive(Clone)]
pub struct Keys {
    current: Hmac<Sha256>,
    /// The keys the current one replaced, newest first: they sign beside it, never alone.
    replaced: Vec<Hmac<Sha256>>,
}

fn master_key(master: &str) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(master.as_bytes()).expect("HMAC takes a key of any length")
}

impl Keys {
    pub fn new(master: &str) -> Self {
        Self {
            current: master_key(master),
            replaced: Vec::new(),
        }
    }

    /// These keys, signing also under the keys `master` replaced (newest first).
    pub fn replacing(self, replaced: &[String]) -> Self {
        Self {
            replaced: replaced.iter().map(|k| master_key(k)).collect(),
            ..self
        }
    }

    /// The 32-byte secret of a subscription's generation.
    pub fn secret(&self, subscription_id: &str, generation: i64) -> Vec<u8> {
        secret_under(&self.current, subscription_id, generation)
    }

    /// The secret as the subscriber keeps it: `whsec_` and base64.
    pub fn shown(&self, subscription_id: &str, generation: i64) -> String {
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(self.secret(subscription_id, generation))
        )
    }

    /// The `webhook-signature` header: the current secret's signature, and the previous one's
    /// while a rotation overlaps.
    pub fn signature(&self, s: &Subscription, id: &str, timestamp: i64, body: &str, now: i64) -> String {
        let mut generations = vec![s.generation];
        if s.generation > 1 && now < s.previous_until {
            generations.push(s.generation - 1);
        }
        std::iter::once(&self.current)
            .chain(&self.replaced)
            .flat_map(|master| generations.iter().map(move |&g| secret_under(master, &s.id, g)))
            .map(|secret| sign(&secret, id, timestamp, body))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn secret_under(master: &Hmac<Sha256>, subscription_id: &str, generation: i64) -> Vec<u8> {
    let mut mac = master.clone();
    mac.update(b"pim webhook secret\0");
    mac.update(subscription_id.as_bytes());
    mac.update(b"\0");
    mac.update(generation.to_string().as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// One Standard Webhooks signature: `v1,` and the base64 of HMAC-SHA256 over
/// `{id}.{timestamp}.{body}`.
pub fn sign(secret: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// A record as a CloudEvents 1.0 JSON event: who did what to whom, with which role, where and
/// why, and the event's own data, with names beside ids.
pub fn cloud_event(r: &Record) -> String {
    let named = |id: &str, name: &str| serde_json::json!({"id": id, "name": name});
    serde_json::json!({
        "specversion": "1.0",
        "id": r.event_id,
        "source": r.source,
        "type": r.action,
        "subject": r.target_id,
        "time": pim_runtime::format::rfc3339_ms(r.time),
        "datacontenttype": "application/json",
        "data": {
            "actor": named(&r.actor_id, &r.actor_name),
            "target": named(&r.target_id, &r.target_name),
            "role": named(&r.role_id, &r.role_name),
            "scope": r.scope,
            "justification": r.justification,
            "ticket": r.ticket,
            "outcome": r.outcome,
            "trace_id": r.trace_id,
            "audit_sequence": r.sequence,
            "payload": serde_json::from_str::<serde_json::Value>(&r.payload_json).unwrap_or_default(),
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receivers_stream_reaches_public_addresses_only() {
        for inside in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::7f00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
            "fec0::1",
            "198.18.0.1",
            "240.0.0.1",
            "192.0.0.1",
        ] {
            let ip: std::net::IpAddr = inside.parse().unwrap();
            assert!(!Reach::Public.allows(ip), "{inside}");
            assert!(Reach::Any.allows(ip), "{inside}");
        }
        for outside in ["8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8", "64:ff9b::808:808"] {
            assert!(Reach::Public.allows(outside.parse().unwrap()), "{outside}");
        }
        for refused in [
            "http://hooks.example.com/x",
            "https://127.0.0.1/x",
            "https://[::1]:8443/x",
            "https://localhost/x",
            "https://a.localhost./x",
            "https://169.254.169.254/latest/meta-data",
        ] {
            assert_eq!(
                Reach::Public.check_url(refused).map_err(|e| e.field),
                Err("url"),
                "{refused}"
            );
        }
        assert!(Reach::Public.check_url("https://receiver.example.com/caep").is_ok());
        assert!(Reach::Any.check_url("http://127.0.0.1:9/caep").is_ok());
    }

    /// A name that resolves to a private address (a public name pointed inside, later) is
    /// refused when sent to, not only when the stream was made.
    #[tokio::test]
    async fn a_delivery_for_public_reach_connects_to_no_private_address() {
        let refused = http::Sender::default()
            .post(
                "https://localhost:9/caep",
                Reach::Public,
                "application/secevent+jwt",
                &[],
                String::new(),
            )
            .await
            .unwrap_err();
        assert!(refused.starts_with("refused"), "{refused}");
    }

    /// The Standard Webhooks specification's own example signs to its published signature.
    #[test]
    fn signatures_match_the_specifications_example() {
        let secret = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        assert_eq!(
            sign(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_rotated_secret_signs_beside_the_old_one_for_a_day() {
        let keys = Keys::new("suite key");
        let mut s = Subscription {
            id: "sub-1".into(),
            generation: 2,
            previous_until: 1_000,
            ..Subscription::default()
        };
        let both = keys.signature(&s, "e1", 1, "{}", 999);
        assert_eq!(both.split(' ').count(), 2);
        assert!(both.starts_with(&sign(&keys.secret("sub-1", 2), "e1", 1, "{}")));
        assert_eq!(keys.signature(&s, "e1", 1, "{}", 1_000).split(' ').count(), 1);
        s.generation = 1;
        assert_ne!(keys.shown("sub-1", 1), keys.shown("sub-1", 2));
        assert!(keys.shown("sub-1", 1).starts_with("whsec_"));
    }

    /// After the suite's key rotates, the secret a receiver holds still verifies while the old
    /// key is given; the new key's secret signs first.
    #[test]
    fn after_the_suites_key_rotates_the_old_secret_verifies_while_the_old_key_is_given() {
        let s = Subscription {
            id: "sub-1".into(),
            generation: 1,
            ..Subscription::default()
        };
        let held = Keys::new("old key").secret("sub-1", 1);
        let rotated = Keys::new("new key").replacing(&["old key".to_owned()]);
        let header = rotated.signature(&s, "e1", 1, "{}", 0);
        let signatures: Vec<&str> = header.split(' ').collect();
        assert_eq!(signatures[0], sign(&rotated.secret("sub-1", 1), "e1", 1, "{}"));
        assert!(signatures.contains(&sign(&held, "e1", 1, "{}").as_str()), "{header}");
        let alone = Keys::new("new key").signature(&s, "e1", 1, "{}", 0);
        assert!(
            !alone.contains(&sign(&held, "e1", 1, "{}")),
            "the old key no longer given"
        );
    }

    #[test]
    fn a_subscription_names_an_https_url_without_credentials_and_published_events() {
        let with = |url: &str| Subscription {
            url: url.into(),
            ..Subscription::default()
        };
        assert!(validate(&with("https://hooks.example.com/pim")).is_ok());
        assert!(validate(&with("http://127.0.0.1:8080/hook")).is_ok());
        assert!(validate(&with("http://[::1]:8080/hook")).is_ok());
        for bad in [
            "http://hooks.example.com/pim",
            "ftp://hooks.example.com",
            "https://user:pass@hooks.example.com/",
            "not a url",
        ] {
            assert_eq!(validate(&with(bad)).map_err(|e| e.field), Err("url"), "{bad}");
        }
        let severe = Subscription {
            min_severity: "urgent".into(),
            ..with("https://h.example/")
        };
        assert_eq!(validate(&severe).map_err(|e| e.field), Err("min_severity"));
        let forged = Subscription {
            description: "evil\u{1b}[2J\r\nFAKE ROW\u{202e}".into(),
            ..with("https://hooks.example.com/pim")
        };
        assert_eq!(validate(&forged).map_err(|e| e.field), Err("description"));
        let typed = |types: &[&str]| Subscription {
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            ..with("https://h.example/")
        };
        assert!(
            validate(&typed(&[
                "RoleActivated",
                "pim.alerting.v1.AlertRaised",
                "AccessDenied"
            ]))
            .is_ok()
        );
        for bad in [
            "RoleActivate",
            "pim.identity.v1.RoleActivated",
            "roleactivated",
            "ChainCheckpoint",
        ] {
            assert_eq!(
                validate(&typed(&[bad])).map_err(|e| e.field),
                Err("event_types"),
                "{bad}"
            );
        }
        assert_eq!(shown_url("https://h.example/p?token=abc#x"), "https://h.example");
        assert_eq!(
            shown_url("https://hooks.slack.example:8443/services/T0/B0/s3cret"),
            "https://hooks.slack.example:8443"
        );
    }

    #[test]
    fn subscriptions_pick_by_type_role_and_severity() {
        let record = |action: &str, role: &str, payload: &str| Record {
            action: action.into(),
            role_id: role.into(),
            payload_json: payload.into(),
            ..Record::default()
        };
        let s = Subscription {
            event_types: vec!["RoleActivated".into(), "pim.alerting.v1.AlertRaised".into()],
            ..Subscription::default()
        };
        assert!(s.wants(&record("pim.assignment.v1.RoleActivated", "r", "{}")));
        assert!(s.wants(&record("pim.alerting.v1.AlertRaised", "", "{}")));
        assert!(!s.wants(&record("pim.assignment.v1.RoleDeactivated", "r", "{}")));
        let s = Subscription {
            role_ids: vec!["ga".into()],
            ..Subscription::default()
        };
        assert!(s.wants(&record("x.v1.A", "ga", "{}")) && !s.wants(&record("x.v1.A", "other", "{}")));
        let s = Subscription {
            group_ids: vec!["ops-id".into()],
            ..Subscription::default()
        };
        let about = |target: &str, scope: &str| Record {
            target_id: target.into(),
            scope: scope.into(),
            ..Record::default()
        };
        assert!(s.wants(&about("ops-id", "/groups/ops-id")), "the group itself");
        assert!(s.wants(&about("lee-id", "/groups/ops-id")), "a member, or access to it");
        assert!(!s.wants(&about("lee-id", "/groups/other-id")) && !s.wants(&about("lee-id", "/")));
        let s = Subscription {
            min_severity: "high".into(),
            ..Subscription::default()
        };
        assert!(s.wants(&record("pim.alerting.v1.AlertRaised", "", r#"{"severity":"critical"}"#)));
        assert!(!s.wants(&record("pim.alerting.v1.AlertRaised", "", r#"{"severity":"medium"}"#)));
        assert!(!s.wants(&record("pim.assignment.v1.RoleActivated", "", "{}")));
    }
}
