//! What the server answered when it did not do what was asked: its words, explained so a
//! person can act on them, and the exit status a script tells them apart by.

use tonic::Status;

/// What the server answered when it did not do what was asked, in words a person can act on;
/// its code decides the exit status ([`exit_status`]).
#[derive(Debug)]
pub struct Answered {
    pub code: tonic::Code,
    text: String,
}

impl std::fmt::Display for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Answered {}

/// A name that names nothing, found so here rather than by the server: exits as the server's
/// NOT_FOUND does (1), whichever looked it up.
pub(crate) fn not_found(text: String) -> anyhow::Error {
    anyhow::Error::new(Answered {
        code: tonic::Code::NotFound,
        text,
    })
}

/// Whether the server refused the caller this (PERMISSION_DENIED), somewhere in `err`.
pub(crate) fn is_denied(err: &anyhow::Error) -> bool {
    answered(err, tonic::Code::PermissionDenied)
}

/// Whether the server answered `code`, somewhere in `err`.
pub(crate) fn answered(err: &anyhow::Error, code: tonic::Code) -> bool {
    err.chain()
        .any(|cause| cause.downcast_ref::<Answered>().is_some_and(|a| a.code == code))
}

/// A question `pim check` could not have answered (exit 5).
#[derive(Debug)]
pub(crate) struct Unanswered;

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the question could not be answered (exit 5, not 1: it does not say the access is not held)")
    }
}

/// The exit status of a command that failed: 1 refused (by a permission, a policy rule or
/// the state of things; `pim check` answers 1 only for "not allowed", and 5 for a question
/// refused), 2 a usage mistake (bad flags or input, not signed in, a server that does not
/// serve the call), 3 PIM unreachable, 4 a fault on the server's side.
pub fn exit_status(err: &anyhow::Error) -> i32 {
    use tonic::Code as C;
    if err.downcast_ref::<Unanswered>().is_some() {
        return 5;
    }
    for cause in err.chain() {
        if let Some(answered) = cause.downcast_ref::<Answered>() {
            return match answered.code {
                // Not signed in (or no longer): a step the user left out, not a refusal. A
                // call the server does not serve: one service's address given for another's.
                C::InvalidArgument | C::OutOfRange | C::Unauthenticated | C::Unimplemented => 2,
                C::Unavailable | C::DeadlineExceeded => 3,
                C::Internal | C::Unknown | C::DataLoss => 4,
                _ => 1,
            };
        }
        if cause.downcast_ref::<tonic::transport::Error>().is_some() {
            return 3;
        }
    }
    2
}

/// A `--watch`'s stream as (re)opened: None when PIM is unavailable for now (restarting),
/// after a moment's wait, to try again as after a lost connection; an error for anything else.
pub(crate) async fn watch_opened<T>(opened: Result<tonic::Response<T>, Status>) -> anyhow::Result<Option<T>> {
    match opened {
        Ok(stream) => Ok(Some(stream.into_inner())),
        Err(status) if status.code() == tonic::Code::Unavailable => {
            eprintln!("PIM unavailable ({}); retrying", status.message());
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            Ok(None)
        }
        Err(status) => Err(explain(status)),
    }
}

/// A gRPC error in words a person can act on. One the connection made (tonic says only
/// "transport error") says what went wrong under it, and what to change when that is TLS.
pub(crate) fn explain(status: Status) -> anyhow::Error {
    if let Some(cause) = connection_cause(&status) {
        return anyhow::Error::new(Answered {
            code: tonic::Code::Unavailable,
            text: format!("PIM could not be reached: {cause}{}", tls_hint(&cause)),
        });
    }
    let rules = pim_runtime::grpc::violated_rules(&status);
    let hint = match status.code() {
        // The session is missing or over; a wrong password or code is not (signing in again
        // would not help).
        tonic::Code::Unauthenticated
            if ["token", "sign in", "session"]
                .iter()
                .any(|w| status.message().contains(w)) =>
        {
            " (run pim login)"
        }
        // A missing permission, not a refusal with its own reason (a wrong password).
        tonic::Code::PermissionDenied if status.message().starts_with("requires permission") => {
            " (your roles do not allow this)"
        }
        tonic::Code::Unavailable => " (is PIM running at --server, or the server of the last pim login?)",
        tonic::Code::Unimplemented => {
            " (the server does not serve this call: give --server the address of the gateway or of pim up, \
             which serve every service; one service serves only its own calls, and pim looks names up at identity)"
        }
        _ => "",
    };
    let rules = if rules.is_empty() {
        String::new()
    } else {
        format!(" [rules: {}]", rules.join(", "))
    };
    anyhow::Error::new(Answered {
        code: status.code(),
        text: format!("{:?}: {}{rules}{hint}", status.code(), status.message()),
    })
}

/// What went wrong under a status the connection made rather than the server, causes
/// outermost first (each once); none for the server's own answers.
pub(crate) fn connection_cause(status: &Status) -> Option<String> {
    let mut causes: Vec<String> = Vec::new();
    let mut next = std::error::Error::source(status);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        next = cause.source();
    }
    (!causes.is_empty()).then(|| causes.join(": "))
}

/// What to change for a connection that failed for TLS, told by its cause.
pub(super) fn tls_hint(cause: &str) -> &'static str {
    let has = |words: &[&str]| words.iter().any(|w| cause.contains(w));
    if has(&["CaUsedAsEndEntity"]) {
        " (the server's certificate is marked as a CA (CA:TRUE), which TLS refuses as a server's own: \
         make it without the mark, or sign it with a CA)"
    } else if has(&["UnknownIssuer", "BadSignature", "unknown issuer"]) {
        " (the server's certificate is not signed by a CA this machine trusts: give its CA with --ca or PIM_TLS_CA)"
    } else if has(&["NotValidForName", "not valid for name"]) {
        " (the server's certificate does not name the host in --server: use a name it holds)"
    } else if has(&["Timeout expired", "timed out"]) {
        " (the server took the connection but did not answer in time: it may be stopped, frozen or overloaded)"
    } else if has(&[
        "Expired",
        "NotValidYet",
        "certificate expired",
        "not valid after",
        "not valid before",
    ]) {
        " (the server's certificate is out of its validity period, or this machine's clock is wrong)"
    } else if has(&["CertificateRequired", "certificate required"]) {
        " (the server requires a client certificate: give --client-cert and --client-key)"
    } else if has(&[
        "UnknownCA",
        "unknown ca",
        "BadCertificate",
        "bad certificate",
        "CertificateUnknown",
    ]) {
        " (the server refused the client certificate: give one its CA signed)"
    } else if has(&["InvalidContentType", "corrupt message", "CorruptMessage"]) {
        " (the server does not speak TLS there: use http:// in --server)"
    } else if has(&["frame with invalid size"]) {
        " (the server seems to serve TLS: use https:// in --server)"
    } else if has(&["broken pipe", "connection closed", "reset by peer", "canceled"]) {
        // Under mutual TLS (1.3) a refused client certificate often reads so: the client has
        // sent its request before the server's alert arrives.
        " (the server closed the connection: over https:// it may require a client certificate \
         (--client-cert, --client-key) or refuse the one given; over http:// it may serve TLS)"
    } else {
        " (is PIM running at --server, or the server of the last pim login?)"
    }
}
