//! A browser's side of the portal for tests and benchmarks: the portal served beside a test
//! suite, and one keep-alive HTTP/1.1 connection that keeps its session cookie, signs in
//! through the form and posts forms with their CSRF token, as a browser does.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::TestSuite;

/// Serves the portal for `ts` on a free loopback port; returns its address.
pub async fn serve_portal(ts: &TestSuite) -> anyhow::Result<std::net::SocketAddr> {
    let portal = pim_portal::Portal::new(
        pim_portal::Upstreams::all_at(ts.channel.clone()),
        pim_portal::PortalOptions {
            secure: false,
            idle: Duration::from_secs(3600),
            lifetime: Duration::from_secs(8 * 3600),
            forwarders: Default::default(),
            public_origin: None,
        },
        Arc::new(pim_runtime::clock::SystemClock),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(portal.serve(listener, std::future::pending()));
    Ok(addr)
}

/// One browser connection: keep-alive HTTP/1.1 to the portal.
pub struct Browser {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    cookie: String,
    /// The last page's CSRF token (what its forms carry).
    pub csrf: String,
    /// The `Origin` forms are sent with; none: the portal's own.
    origin: Option<String>,
    /// Requests are a page's own polls (`x-pim-poll`, as `portal.js` sends them).
    pub polling: bool,
}

impl Browser {
    pub async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: addr.to_string(),
            cookie: String::new(),
            csrf: String::new(),
            origin: None,
            polling: false,
        })
    }

    /// A second tab: another connection carrying the same session cookie.
    pub async fn another_tab(&self) -> anyhow::Result<Self> {
        let mut tab = Self::connect(self.host.parse()?).await?;
        tab.cookie = self.cookie.clone();
        tab.csrf = self.csrf.clone();
        Ok(tab)
    }

    /// Sends a request; keeps a session cookie the answer sets. Returns (status, body).
    pub async fn send(&mut self, method: &str, path: &str, form: Option<String>) -> anyhow::Result<(u16, String)> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.host);
        if !self.cookie.is_empty() {
            request = request.header(http::header::COOKIE, &self.cookie);
        }
        if self.polling {
            request = request.header("x-pim-poll", "1");
        }
        if form.is_some() {
            request = request
                .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(
                    http::header::ORIGIN,
                    self.origin.clone().unwrap_or_else(|| format!("http://{}", self.host)),
                );
        }
        let request = request.body(Full::new(Bytes::from(form.unwrap_or_default())))?;
        self.sender.ready().await?;
        let answer = self.sender.send_request(request).await?;
        if let Some(cookie) = answer
            .headers()
            .get(http::header::SET_COOKIE)
            .and_then(|c| c.to_str().ok())
            .and_then(|c| c.split(';').next())
        {
            self.cookie = cookie.to_owned();
        }
        let status = answer.status().as_u16();
        let body = answer.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        if let Some(csrf) = between(&body, "name=\"csrf\" value=\"", "\"") {
            self.csrf = csrf.to_owned();
        }
        Ok((status, body))
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<String> {
        match self.send("GET", path, None).await? {
            (200, body) => Ok(body),
            (status, body) => bail!("GET {path}: {status} {body}"),
        }
    }
}

impl Browser {
    /// Posts a form from the last page (its CSRF token added), URL-encoded.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
        let mut body = format!("csrf={}", encode(&self.csrf));
        for (name, value) in fields {
            body.push_str(&format!("&{}={}", encode(name), encode(value)));
        }
        self.send("POST", path, Some(body)).await
    }

    /// As [`Browser::post`], as a page of `origin` would send it: this browser's cookie and
    /// even the right CSRF token, but another site's `Origin`.
    pub async fn post_from(
        &mut self,
        origin: &str,
        path: &str,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<(u16, String)> {
        self.origin = Some(origin.to_owned());
        let posted = self.post(path, fields).await;
        self.origin = None;
        posted
    }

    /// Signs in through the form: the password (no MFA asked).
    pub async fn sign_in(&mut self, user: &str, password: &str) -> anyhow::Result<()> {
        self.get("/signin").await?;
        let (status, body) = self.post("/signin", &[("user", user), ("password", password)]).await?;
        anyhow::ensure!(status == 303, "signing in answered {status}: {body}");
        Ok(())
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn between<'a>(text: &'a str, before: &str, after: &str) -> Option<&'a str> {
    let start = text.find(before)? + before.len();
    let len = text[start..].find(after)?;
    Some(&text[start..start + len])
}
