//! Whose rows a PostgreSQL connection works on.
//!
//! Every table that holds a tenant's rows has row-level security FORCEd
//! (migration 0012), with two policies: rows of the tenant named by the
//! setting `mailpipe.tenant`, and every row when `mailpipe.scope` is
//! `platform`. A connection that set neither, whatever its role (the table
//! owner included), reads no row of any of them and writes none.
//!
//! - The platform's work (claims, outcomes, tracking events, analytics,
//!   erasure, the operator's commands) runs on connections whose session
//!   [`platform`] set: every connection of a [`Store::connect`] pool.
//! - A tenant's work (the tenant API: its campaigns, domains and
//!   suppressions) runs through [`Store::for_tenant`]: each statement in a
//!   transaction that first [`enter`]s the tenant's context, as role
//!   [`TENANT_ROLE`], which may only read what tenants read and write their
//!   suppressions. A query there that forgot its `WHERE tenant_id` still
//!   sees only that tenant's rows.
//!
//! The settings are not a secret: they fence the platform's own queries
//! from each other's mistakes, not a holder of the database password. The
//! password's reach is fenced by the roles: the services connect as a role
//! that owns nothing and holds [`SERVICE_ROLE`]'s grants (rows, never the
//! schema), and only `mailpipe migrate` connects as the owner.
//!
//! [`Store::connect`]: crate::Store::connect
//! [`Store::for_tenant`]: crate::Store::for_tenant

use mailpipe_core::TenantId;
use sqlx::PgConnection;

/// The role a tenant's statements run as (`SET LOCAL ROLE`); the services'
/// login role must be a member. Created by the database administrator.
pub const TENANT_ROLE: &str = "mailpipe_api";

/// The role that holds the services' grants (`migrate` grants them to it);
/// the services' login role must be a member. Created by the database
/// administrator.
pub const SERVICE_ROLE: &str = "mailpipe_service";

/// Marks a new connection as the platform's (see the module docs).
pub(crate) async fn platform(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET mailpipe.scope = 'platform'").execute(conn).await.map(|_| ())
}

/// Enters `tenant`'s context for the rest of the open transaction, in one
/// round trip: role [`TENANT_ROLE`], `mailpipe.scope` no longer the
/// platform's, `mailpipe.tenant` the tenant. All three end with the
/// transaction.
pub(crate) async fn enter(tx: &mut PgConnection, tenant: &TenantId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config('role', $1, true), set_config('mailpipe.scope', 'tenant', true),
                set_config('mailpipe.tenant', $2, true)",
    )
    .bind(TENANT_ROLE)
    .bind(tenant.as_str())
    .execute(tx)
    .await
    .map(|_| ())
}
