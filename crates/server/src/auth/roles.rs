//! Roles and the permissions they grant.

use serde::{Deserialize, Serialize};

/// A permission checked by handlers and the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Watch sessions.
    View,
    /// Send input, clipboard and special keys.
    Control,
    /// Create and cancel support codes.
    ManageCodes,
    /// Label machines and manage agent keys.
    ManageMachines,
    /// Manage users.
    ManageUsers,
    /// Read the audit log.
    ViewAudit,
    /// Open a remote terminal (a shell on the machine): administrators only for now.
    Terminal,
    /// Upload files to machines and download files from them.
    Files,
    /// Watch session recordings (they hold everything a session showed).
    Recordings,
}

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Support work: codes, view and control.
    Technician,
    /// Watch only.
    Viewer,
}

impl Role {
    /// Parses a stored or requested role name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "admin" => Some(Role::Admin),
            "technician" => Some(Role::Technician),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Technician => "technician",
            Role::Viewer => "viewer",
        }
    }

    /// The permissions the role grants.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Admin => &[
                View,
                Control,
                ManageCodes,
                ManageMachines,
                ManageUsers,
                ViewAudit,
                Terminal,
                Files,
                Recordings,
            ],
            Role::Technician => &[View, Control, ManageCodes, Files],
            Role::Viewer => &[View],
        }
    }

    /// Whether the role grants `permission`.
    pub fn has(self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }
}
