//! Generated gRPC and event types for PIM. Generated from `proto/` by `build.rs`; never edited.

#![allow(clippy::all, clippy::pedantic)]

pub mod catalogue;
mod defaults;
pub use defaults::{EXTENSION_WINDOW_MS, extension_window_open};
pub mod event_types;
mod names;

pub mod common {
    pub mod v1 {
        tonic::include_proto!("pim.common.v1");
    }
}
pub mod identity {
    pub mod v1 {
        tonic::include_proto!("pim.identity.v1");
    }
}
pub mod assignment {
    pub mod v1 {
        tonic::include_proto!("pim.assignment.v1");
    }
}
pub mod approval {
    pub mod v1 {
        tonic::include_proto!("pim.approval.v1");
    }
}
pub mod alerting {
    pub mod v1 {
        tonic::include_proto!("pim.alerting.v1");
    }
}
pub mod audit {
    pub mod v1 {
        tonic::include_proto!("pim.audit.v1");
    }
}
pub mod events {
    pub mod v1 {
        tonic::include_proto!("pim.events.v1");
    }
}

/// The encoded `FileDescriptorSet` of every PIM proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pim_descriptor.bin"));

/// Fully-qualified names of every gRPC service, by owning service.
pub mod service_names {
    pub const IDENTITY: &[&str] = &[
        "pim.identity.v1.DirectoryService",
        "pim.identity.v1.AuthService",
        "pim.identity.v1.MfaService",
    ];
    pub const ASSIGNMENT: &[&str] = &[
        "pim.assignment.v1.RoleService",
        "pim.assignment.v1.PolicyService",
        "pim.assignment.v1.AssignmentService",
        "pim.assignment.v1.AccessService",
        "pim.assignment.v1.ReconcileService",
    ];
    pub const APPROVAL: &[&str] = &["pim.approval.v1.ApprovalService", "pim.approval.v1.AccessReviewService"];
    pub const ALERTING: &[&str] = &["pim.alerting.v1.AlertService"];
    pub const AUDIT: &[&str] = &["pim.audit.v1.AuditService", "pim.audit.v1.WebhookService"];
}
