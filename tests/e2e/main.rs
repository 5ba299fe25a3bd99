//! Cross-service tests, one binary: the walking-skeleton slice on PostgreSQL + Redis and on
//! the embedded default, the gRPC surface (health, reflection, auth), and the event backbone.

mod activation;
mod alerting;
mod approval;
mod audit;
mod backbone;
mod consistency;
mod credentials;
mod groups;
mod layering;
mod limits;
mod mfa;
mod notifications;
mod portal;
mod protection;
mod reviews;
mod roles;
mod secrets;
mod slice;
mod split;
mod ssf;
mod surface;
mod tls;
mod trust;
