//! Machines (endpoints) of the fleet; soft-deleted rows stay but are invisible.

use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row};

use crate::events::insert_event;
use crate::keys::{insert_key, keys_of, revoke_key};
use crate::search::{SearchColumns, id_set_json, in_id_set, parse_query, where_clause};
use crate::{
    AgentKey, Enrollment, Machine, MachineLabels, MachineSearch, MachineStatus, MachineUpsert,
    Millis, NewEvent, NewMachine, Store, StoreError, StoreResult, conflict, decode_err,
    state_column,
};

const MACHINE_COLS: &str = "agent_id, tenant_id, machine_uid, hostname, os, os_version, \
     agent_version, company, site, department, device_type, tags, inventory, external_ip, \
     status, pending_reason, claimed_machine_uid, site_id, last_seen, created_at, notes, update_channel, update_status";

/// Page size cap of machine lists and searches.
const MAX_MACHINE_PAGE: i64 = 1000;

/// Machines back-filled per transaction by [`Store::backfill_machine_search`].
const BACKFILL_BATCH: i64 = 500;

fn machine_from_row(row: &AnyRow) -> StoreResult<Machine> {
    let tags: String = row.try_get("tags")?;
    let inventory: String = row.try_get("inventory")?;
    Ok(Machine {
        agent_id: row.try_get("agent_id")?,
        tenant_id: row.try_get("tenant_id")?,
        machine_uid: row.try_get("machine_uid")?,
        hostname: row.try_get("hostname")?,
        os: row.try_get("os")?,
        os_version: row.try_get("os_version")?,
        agent_version: row.try_get("agent_version")?,
        company: row.try_get("company")?,
        site: row.try_get("site")?,
        department: row.try_get("department")?,
        device_type: row.try_get("device_type")?,
        tags: serde_json::from_str(&tags).map_err(decode_err)?,
        inventory: serde_json::from_str(&inventory).map_err(decode_err)?,
        external_ip: row.try_get("external_ip")?,
        status: state_column(row, "status", "machine status", MachineStatus::parse)?,
        pending_reason: row.try_get("pending_reason")?,
        claimed_machine_uid: row.try_get("claimed_machine_uid")?,
        site_id: row.try_get("site_id")?,
        last_seen: row.try_get("last_seen")?,
        created_at: row.try_get("created_at")?,
        notes: row.try_get("notes")?,
        update_channel: row.try_get("update_channel")?,
        update_status: match row.try_get::<Option<String>, _>("update_status")? {
            Some(text) => Some(serde_json::from_str(&text).map_err(decode_err)?),
            None => None,
        },
    })
}

fn machines_from_rows(rows: &[AnyRow]) -> StoreResult<Vec<Machine>> {
    rows.iter().map(machine_from_row).collect()
}

/// Recomputes the `search_*` columns of one machine (live or not) from its stored
/// attributes, on the caller's connection (inside the transaction of the write that
/// changed them, which holds the row's write lock until commit), and returns the
/// machine. `NotFound` if there is no such row.
async fn refresh_search(conn: &mut AnyConnection, agent_id: &str) -> StoreResult<Machine> {
    let row = sqlx::query(&format!(
        "SELECT {MACHINE_COLS} FROM machines WHERE agent_id = $1"
    ))
    .bind(agent_id)
    .fetch_one(&mut *conn)
    .await?;
    let m = machine_from_row(&row)?;
    let c = SearchColumns::of(&m);
    sqlx::query(
        "UPDATE machines SET search_text = $2, search_host = $3, search_os = $4, \
         search_user = $5, search_ip = $6, search_site = $7, search_tags = $8, \
         search_company = $9, search_version = $10 WHERE agent_id = $1",
    )
    .bind(agent_id)
    .bind(c.text)
    .bind(c.host)
    .bind(c.os)
    .bind(c.user)
    .bind(c.ip)
    .bind(c.site)
    .bind(c.tags)
    .bind(c.company)
    .bind(c.version)
    .execute(&mut *conn)
    .await?;
    Ok(m)
}

fn tags_json(tags: &[String]) -> StoreResult<String> {
    serde_json::to_string(tags).map_err(decode_err)
}

/// Binds text arguments in order.
fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    args: &'q [String],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    for a in args {
        q = q.bind(a.as_str());
    }
    q
}

/// Inserts a machine row on `conn` (search columns not computed yet).
async fn insert_machine(conn: &mut AnyConnection, m: &NewMachine) -> StoreResult<()> {
    let tags = tags_json(&m.tags)?;
    sqlx::query(
        "INSERT INTO machines (agent_id, tenant_id, machine_uid, claimed_machine_uid, \
         hostname, os, os_version, agent_version, external_ip, site_id, status, \
         pending_reason, company, site, department, device_type, tags, last_seen, \
         created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
         $17, $18, $19)",
    )
    .bind(&m.agent_id)
    .bind(&m.tenant_id)
    .bind(m.machine_uid.as_deref())
    .bind(m.claimed_machine_uid.as_deref())
    .bind(&m.hostname)
    .bind(&m.os)
    .bind(&m.os_version)
    .bind(&m.agent_version)
    .bind(m.external_ip.as_deref())
    .bind(m.site_id.as_deref())
    .bind(m.status.as_str())
    .bind(m.pending_reason.as_deref())
    .bind(m.company.as_deref())
    .bind(m.site.as_deref())
    .bind(m.department.as_deref())
    .bind(m.device_type.as_deref())
    .bind(tags)
    .bind(m.last_seen)
    .bind(m.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Applies label changes to a live machine on `conn`, recomputes its search columns
/// and returns it; `NotFound` if missing or soft-deleted.
async fn apply_labels(
    conn: &mut AnyConnection,
    agent_id: &str,
    labels: &MachineLabels,
) -> StoreResult<Machine> {
    let mut sets = Vec::new();
    let mut args: Vec<Option<String>> = Vec::new();
    for (column, value) in [
        ("company", &labels.company),
        ("site", &labels.site),
        ("department", &labels.department),
        ("device_type", &labels.device_type),
        ("notes", &labels.notes),
        ("update_channel", &labels.update_channel),
    ] {
        if let Some(v) = value {
            args.push(v.clone());
            sets.push(format!("{column} = ${}", args.len() + 1));
        }
    }
    if let Some(tags) = &labels.tags {
        args.push(Some(tags_json(tags)?));
        sets.push(format!("tags = ${}", args.len() + 1));
    }
    // With nothing to change, a no-op update still checks the row and locks it.
    let sets = if sets.is_empty() {
        "agent_id = agent_id".to_owned()
    } else {
        sets.join(", ")
    };
    let sql = format!("UPDATE machines SET {sets} WHERE agent_id = $1 AND deleted_at IS NULL");
    let mut q = sqlx::query(&sql).bind(agent_id);
    for a in &args {
        q = q.bind(a.as_deref());
    }
    if q.execute(&mut *conn).await?.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    refresh_search(conn, agent_id).await
}

/// Moves a live machine to a site of its own tenant (`Some`) or out of any (`None`) on
/// `conn`; `NotFound` if the machine is missing or soft-deleted, or the site is not in
/// its tenant.
async fn set_site(
    conn: &mut AnyConnection,
    agent_id: &str,
    site_id: Option<&str>,
) -> StoreResult<()> {
    let res = match site_id {
        Some(site_id) => {
            sqlx::query(
                "UPDATE machines SET site_id = $2 WHERE agent_id = $1 AND deleted_at IS NULL \
                 AND EXISTS (SELECT 1 FROM sites \
                 WHERE sites.id = $2 AND sites.tenant_id = machines.tenant_id)",
            )
            .bind(agent_id)
            .bind(site_id)
            .execute(&mut *conn)
            .await?
        }
        None => {
            sqlx::query(
                "UPDATE machines SET site_id = NULL WHERE agent_id = $1 AND deleted_at IS NULL",
            )
            .bind(agent_id)
            .execute(&mut *conn)
            .await?
        }
    };
    if res.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

impl Store {
    /// Inserts the machine or refreshes its reported fields (hostname, OS, versions,
    /// external IP, `last_seen = seen_at`). `machine_uid` is only set when the row has
    /// none; the tenant and labels of an existing row are kept. A soft-deleted machine
    /// stays deleted: `NotFound`. Another live machine of the tenant with the same uid:
    /// `Conflict("machine uid taken")`.
    pub async fn upsert_machine(&self, m: &MachineUpsert) -> StoreResult<Machine> {
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query(
            "INSERT INTO machines (agent_id, tenant_id, machine_uid, hostname, os, os_version, \
             agent_version, external_ip, last_seen, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
             ON CONFLICT (agent_id) DO UPDATE SET \
             machine_uid = COALESCE(machines.machine_uid, excluded.machine_uid), \
             hostname = excluded.hostname, os = excluded.os, \
             os_version = excluded.os_version, agent_version = excluded.agent_version, \
             external_ip = excluded.external_ip, last_seen = excluded.last_seen \
             WHERE machines.deleted_at IS NULL",
        )
        .bind(&m.agent_id)
        .bind(&m.tenant_id)
        .bind(m.machine_uid.as_deref())
        .bind(&m.hostname)
        .bind(&m.os)
        .bind(&m.os_version)
        .bind(&m.agent_version)
        .bind(m.external_ip.as_deref())
        .bind(m.seen_at)
        .execute(&mut *tx)
        .await
        .map_err(conflict("machine uid taken"))?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        }
        let machine = refresh_search(&mut tx, &m.agent_id).await?;
        tx.commit().await?;
        Ok(machine)
    }

    /// The live machine with this agent id; `NotFound` if missing or soft-deleted.
    pub async fn get_machine(&self, agent_id: &str) -> StoreResult<Machine> {
        let row = sqlx::query(&format!(
            "SELECT {MACHINE_COLS} FROM machines WHERE agent_id = $1 AND deleted_at IS NULL"
        ))
        .bind(agent_id)
        .fetch_one(self.pool())
        .await?;
        machine_from_row(&row)
    }

    /// The tenant's live machine with this hardware uid, if any.
    pub async fn find_machine_by_uid(
        &self,
        tenant_id: &str,
        machine_uid: &str,
    ) -> StoreResult<Option<Machine>> {
        let row = sqlx::query(&format!(
            "SELECT {MACHINE_COLS} FROM machines \
             WHERE tenant_id = $1 AND machine_uid = $2 AND deleted_at IS NULL"
        ))
        .bind(tenant_id)
        .bind(machine_uid)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(machine_from_row).transpose()
    }

    /// A page of the tenant's live machines ordered by hostname (case-insensitively)
    /// then agent id, and the total number of live machines. `limit` is clamped to
    /// `0..=1000`, a negative `offset` counts as 0.
    pub async fn list_machines(
        &self,
        tenant_id: &str,
        limit: i64,
        offset: i64,
    ) -> StoreResult<(Vec<Machine>, i64)> {
        let rows = sqlx::query(&format!(
            "SELECT {MACHINE_COLS} FROM machines WHERE tenant_id = $1 AND deleted_at IS NULL \
             ORDER BY lower(hostname), agent_id LIMIT $2 OFFSET $3"
        ))
        .bind(tenant_id)
        .bind(limit.clamp(0, MAX_MACHINE_PAGE))
        .bind(offset.max(0))
        .fetch_all(self.pool())
        .await?;
        let machines = rows
            .iter()
            .map(machine_from_row)
            .collect::<StoreResult<_>>()?;
        let total = sqlx::query(
            "SELECT COUNT(*) AS n FROM machines WHERE tenant_id = $1 AND deleted_at IS NULL",
        )
        .bind(tenant_id)
        .fetch_one(self.pool())
        .await?
        .try_get("n")?;
        Ok((machines, total))
    }

    /// Sets `last_seen`; `NotFound` if missing or soft-deleted.
    pub async fn touch_machine(&self, agent_id: &str, now: Millis) -> StoreResult<()> {
        let res = sqlx::query(
            "UPDATE machines SET last_seen = $2 WHERE agent_id = $1 AND deleted_at IS NULL",
        )
        .bind(agent_id)
        .bind(now)
        .execute(self.pool())
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Soft-deletes a machine; `NotFound` if missing or already deleted. `audit` is
    /// recorded in the same transaction.
    pub async fn soft_delete_machine(
        &self,
        agent_id: &str,
        now: Millis,
        audit: &NewEvent,
    ) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query(
            "UPDATE machines SET deleted_at = $2 WHERE agent_id = $1 AND deleted_at IS NULL",
        )
        .bind(agent_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        }
        insert_event(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the reported inventory (a JSON value) and sets `last_seen = now`
    /// (inventory only arrives from a connected agent); `NotFound` if missing or deleted.
    pub async fn set_machine_inventory(
        &self,
        agent_id: &str,
        inventory: &serde_json::Value,
        now: Millis,
    ) -> StoreResult<()> {
        let text = serde_json::to_string(inventory).map_err(decode_err)?;
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query(
            "UPDATE machines SET inventory = $2, last_seen = $3 \
             WHERE agent_id = $1 AND deleted_at IS NULL",
        )
        .bind(agent_id)
        .bind(text)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        }
        refresh_search(&mut tx, agent_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Changes a live machine's labels (see [`MachineLabels`]: `None` leaves a field,
    /// `Some(None)` clears it) and returns the machine. `now` is the time of the change
    /// (the time `audit` is recorded at, in the same transaction; `None` when the change
    /// is one step of a larger operation audited on its own, such as enrollment).
    /// `NotFound` if missing or soft-deleted.
    pub async fn update_machine_labels(
        &self,
        agent_id: &str,
        labels: &MachineLabels,
        now: Millis,
        audit: Option<&NewEvent>,
    ) -> StoreResult<Machine> {
        let mut tx = self.pool().begin().await?;
        let machine = apply_labels(&mut tx, agent_id, labels).await?;
        if let Some(audit) = audit {
            insert_event(&mut tx, audit, now).await?;
        }
        tx.commit().await?;
        Ok(machine)
    }

    /// Marks a live machine pending with `reason` (`Some`), or approves it (`None`:
    /// status `active`, reason cleared; a collided machine's `claimed_machine_uid` is
    /// kept for the record). `NotFound` if missing or soft-deleted. `audit`, if given, is
    /// recorded at `now` in the same transaction.
    pub async fn set_machine_pending(
        &self,
        agent_id: &str,
        reason: Option<&str>,
        now: Millis,
        audit: Option<&NewEvent>,
    ) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        let status = if reason.is_some() {
            MachineStatus::Pending
        } else {
            MachineStatus::Active
        };
        let res = sqlx::query(
            "UPDATE machines SET status = $2, pending_reason = $3 \
             WHERE agent_id = $1 AND deleted_at IS NULL",
        )
        .bind(agent_id)
        .bind(status.as_str())
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        }
        if let Some(audit) = audit {
            insert_event(&mut tx, audit, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Moves a live machine to an enrollment site of its own tenant (`Some`), or takes it
    /// out of any site (`None`). The site label ([`Machine::site`]) is not touched.
    /// `NotFound` if the machine is missing or soft-deleted, or the site does not exist
    /// in the machine's tenant.
    pub async fn set_machine_site(&self, agent_id: &str, site_id: Option<&str>) -> StoreResult<()> {
        let mut conn = self.pool().acquire().await?;
        set_site(&mut conn, agent_id, site_id).await
    }

    /// Creates a machine with all its fields (enrollment; a collided endpoint's pending
    /// row, whose `machine_uid` is `None` and `claimed_machine_uid` the uid it claimed).
    /// Inventory starts as `{}`. `Conflict("machine uid taken")` if another live machine
    /// of the tenant has this `machine_uid`; `Conflict("machine exists")` if the agent
    /// id is taken (even by a soft-deleted machine).
    pub async fn create_machine(&self, m: &NewMachine) -> StoreResult<Machine> {
        let mut tx = self.pool().begin().await?;
        if let Err(e) = insert_machine(&mut tx, m).await {
            drop(tx);
            return Err(self.create_machine_error(e, &m.agent_id).await);
        }
        let machine = refresh_search(&mut tx, &m.agent_id).await?;
        tx.commit().await?;
        Ok(machine)
    }

    /// Names the conflict of a failed machine insert (outside its aborted transaction):
    /// `Conflict("machine exists")` or `Conflict("machine uid taken")`.
    async fn create_machine_error(&self, e: StoreError, agent_id: &str) -> StoreError {
        if !matches!(e, StoreError::Conflict(_)) {
            return e;
        }
        let exists = sqlx::query("SELECT COUNT(*) AS n FROM machines WHERE agent_id = $1")
            .bind(agent_id)
            .fetch_one(self.pool())
            .await
            .map_err(StoreError::from)
            .and_then(|row| Ok(row.try_get::<i64, _>("n")?));
        match exists {
            Ok(n) if n > 0 => StoreError::Conflict("machine exists"),
            Ok(_) => StoreError::Conflict("machine uid taken"),
            Err(e) => e,
        }
    }

    /// Enrolls a machine in one transaction: creates `e.new_machine` (or takes the live
    /// machine `e.key.agent_id`), puts it into site `e.site_id`, applies `e.labels`,
    /// revokes the machine's unrevoked keys, recording `revoked_event(key)` for each,
    /// and stores `e.key` with `e.event`, all at `e.key.created_at`. Returns the machine
    /// and the keys it revoked. Errors as [`Store::create_machine`] for a new machine;
    /// `NotFound` if the machine is missing or soft-deleted, or the site is not in its
    /// tenant; `Conflict("key exists")` as [`Store::create_agent_key`]. Nothing is
    /// stored on an error.
    pub async fn enroll(
        &self,
        e: &Enrollment,
        revoked_event: impl Fn(&AgentKey) -> NewEvent + Send + Sync,
    ) -> StoreResult<(Machine, Vec<AgentKey>)> {
        let agent_id = e.key.agent_id.as_str();
        let now = e.key.created_at;
        let mut tx = self.pool().begin().await?;
        if let Some(m) = &e.new_machine
            && let Err(err) = insert_machine(&mut tx, m).await
        {
            drop(tx);
            return Err(self.create_machine_error(err, &m.agent_id).await);
        }
        // Writing the machine row first holds its lock (PostgreSQL) or the write lock
        // (SQLite) until commit, so a concurrent enrollment of the same machine reads
        // the keys only after this one commits.
        set_site(&mut tx, agent_id, Some(&e.site_id)).await?;
        let machine = apply_labels(&mut tx, agent_id, &e.labels).await?;
        let mut revoked = Vec::new();
        for old in keys_of(&mut tx, agent_id).await? {
            if old.revoked_at.is_none()
                && let Some(key) = revoke_key(&mut tx, agent_id, &old.id, now).await?
            {
                insert_event(&mut tx, &revoked_event(&key), now).await?;
                revoked.push(key);
            }
        }
        insert_event(&mut tx, &e.event, now).await?;
        insert_key(&mut tx, &e.key).await?;
        tx.commit().await?;
        Ok((machine, revoked))
    }

    /// Searches the tenant's live machines (query syntax: [`MachineSearch`]) and
    /// returns one page ordered by hostname (case-insensitively, ASCII folding) then
    /// agent id, with the total number of matches. `limit` is clamped to `0..=1000`, a
    /// negative `offset` counts as 0.
    pub async fn search_machines(&self, s: &MachineSearch) -> StoreResult<(Vec<Machine>, i64)> {
        let terms = parse_query(&s.query);
        let (cond, args) = where_clause(self.backend(), &terms, s.online_ids.as_deref(), 2);
        let base = format!("FROM machines WHERE tenant_id = $1 AND deleted_at IS NULL{cond}");
        let n = args.len() + 2;
        let limit = s.limit.clamp(0, MAX_MACHINE_PAGE);
        let offset = s.offset.max(0);
        let page_sql = format!(
            "SELECT {MACHINE_COLS} {base} ORDER BY lower(hostname), agent_id \
             LIMIT ${n} OFFSET ${}",
            n + 1
        );
        let rows = bind_all(sqlx::query(&page_sql).bind(&s.tenant_id), &args)
            .bind(limit)
            .bind(offset)
            .fetch_all(self.pool())
            .await?;
        let machines = machines_from_rows(&rows)?;
        // A short first page already tells the total; otherwise count.
        let total = if offset == 0 && (machines.len() as i64) < limit {
            machines.len() as i64
        } else {
            let count_sql = format!("SELECT COUNT(*) AS n {base}");
            bind_all(sqlx::query(&count_sql).bind(&s.tenant_id), &args)
                .fetch_one(self.pool())
                .await?
                .try_get("n")?
        };
        Ok((machines, total))
    }

    /// The tenant's live machines among `agent_ids` (for bulk operations), ordered like
    /// [`Store::list_machines`]; unknown, deleted and other tenants' ids are left out.
    pub async fn list_machines_by_ids(
        &self,
        tenant_id: &str,
        agent_ids: &[String],
    ) -> StoreResult<Vec<Machine>> {
        if agent_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {MACHINE_COLS} FROM machines WHERE tenant_id = $1 AND deleted_at IS NULL \
             AND {} ORDER BY lower(hostname), agent_id",
            in_id_set(self.backend(), "agent_id", 2, false)
        ))
        .bind(tenant_id)
        .bind(id_set_json(agent_ids))
        .fetch_all(self.pool())
        .await?;
        machines_from_rows(&rows)
    }

    /// Number of the tenant's live machines.
    pub async fn count_machines(&self, tenant_id: &str) -> StoreResult<i64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM machines WHERE tenant_id = $1 AND deleted_at IS NULL",
        )
        .bind(tenant_id)
        .fetch_one(self.pool())
        .await?
        .try_get("n")?)
    }

    /// Computes the search columns of every machine that has none yet (rows written
    /// before migration 0002, or by an older binary); run by [`Store::connect`].
    pub(crate) async fn backfill_machine_search(&self) -> StoreResult<u64> {
        let mut done = 0;
        loop {
            let ids: Vec<String> =
                sqlx::query("SELECT agent_id FROM machines WHERE search_text IS NULL LIMIT $1")
                    .bind(BACKFILL_BATCH)
                    .fetch_all(self.pool())
                    .await?
                    .iter()
                    .map(|r| r.try_get("agent_id"))
                    .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                return Ok(done);
            }
            let mut tx = self.pool().begin().await?;
            for id in &ids {
                refresh_search(&mut tx, id).await?;
            }
            tx.commit().await?;
            done += ids.len() as u64;
        }
    }
}
