//! Charge point data: chargers, connectors, id tags, transactions, meter values and the message log.

use chrono::{DateTime, Utc};
use entity::{
    charger, connector, connector_status_history, id_tag, meter_value, ocpp_message, transaction,
};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};
use serde_json::Value;

use super::{Store, StoreError};

/// One sampled value, flattened, with the spec's defaults filled in for absent optional fields.
#[derive(Clone, Debug, PartialEq)]
pub struct MeterSample {
    pub timestamp: DateTime<Utc>,
    pub value: String,
    pub measurand: String,
    pub phase: String,
    pub unit: String,
    pub context: String,
    pub location: String,
    pub format: String,
}

/// Boot data a charge point reports.
#[derive(Clone, Debug, Default)]
pub struct BootInfo {
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub firmware: Option<String>,
    pub raw: Value,
}

#[derive(Clone, Debug, Default)]
pub struct ChargerPatch {
    pub security_profile: Option<i32>,
    /// `Some(None)` clears the password.
    pub password_hash: Option<Option<String>>,
    pub blocked: Option<bool>,
    pub notes: Option<Option<String>>,
    pub registration_status: Option<String>,
}

#[derive(Clone, Debug)]
pub struct NewTransaction {
    pub charger_id: i32,
    pub connector_id: i32,
    pub id_tag: String,
    pub start_status: String,
    pub meter_start: i64,
    pub started_at: DateTime<Utc>,
    pub reservation_id: Option<i32>,
}

#[derive(Clone, Debug, Default)]
pub struct IdTagFields {
    pub status: Option<String>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub parent: Option<Option<String>>,
    pub owner: Option<Option<String>>,
    /// `Some(None)` detaches the tag from its account.
    pub account_id: Option<Option<i32>>,
}

/// Filters of the message log listing.
#[derive(Clone, Debug, Default)]
pub struct MessageFilter {
    pub direction: Option<String>,
    pub action: Option<String>,
    pub before: Option<i64>,
    pub limit: u64,
}

const CHUNK: usize = 400;

impl Store {
    // ---- chargers -------------------------------------------------------------------------------------

    /// # Errors
    /// On a database failure.
    pub async fn charger(
        &self,
        charge_point_id: &str,
    ) -> Result<Option<charger::Model>, StoreError> {
        Ok(charger::Entity::find()
            .filter(charger::Column::ChargePointId.eq(charge_point_id))
            .one(&self.db)
            .await?)
    }

    /// Creates the charger row if it does not exist yet (auto-registration).
    ///
    /// # Errors
    /// On a database failure.
    pub async fn ensure_charger(
        &self,
        charge_point_id: &str,
    ) -> Result<charger::Model, StoreError> {
        if let Some(row) = self.charger(charge_point_id).await? {
            return Ok(row);
        }
        let now = Utc::now();
        let row = charger::ActiveModel {
            charge_point_id: Set(charge_point_id.to_owned()),
            vendor: Set(None),
            model: Set(None),
            serial_number: Set(None),
            firmware: Set(None),
            boot_info: Set(None),
            registration_status: Set("Accepted".into()),
            security_profile: Set(0),
            password_hash: Set(None),
            blocked: Set(false),
            notes: Set(None),
            configuration: Set(None),
            configuration_read_at: Set(None),
            diagnostics_status: Set(None),
            firmware_status: Set(None),
            last_boot_at: Set(None),
            last_seen: Set(Some(now)),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        };
        let inserted = charger::Entity::insert(row)
            .on_conflict_do_nothing_on([charger::Column::ChargePointId])
            .exec_without_returning(&self.db)
            .await?;
        let _ = inserted;
        self.charger(charge_point_id).await?.ok_or_else(|| {
            StoreError::Db(sea_orm::DbErr::RecordNotFound(charge_point_id.to_owned()))
        })
    }

    /// # Errors
    /// On a database failure.
    pub async fn list_chargers(&self) -> Result<Vec<charger::Model>, StoreError> {
        Ok(charger::Entity::find()
            .order_by_asc(charger::Column::ChargePointId)
            .all(&self.db)
            .await?)
    }

    /// # Errors
    /// On a database failure.
    pub async fn record_boot(
        &self,
        charger_id: i32,
        boot: BootInfo,
    ) -> Result<charger::Model, StoreError> {
        let row = charger::Entity::find_by_id(charger_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| {
                StoreError::Db(sea_orm::DbErr::RecordNotFound(charger_id.to_string()))
            })?;
        let now = Utc::now();
        let mut active: charger::ActiveModel = row.into();
        active.vendor = Set(boot.vendor);
        active.model = Set(boot.model);
        active.serial_number = Set(boot.serial_number);
        active.firmware = Set(boot.firmware);
        active.boot_info = Set(Some(boot.raw));
        active.last_boot_at = Set(Some(now));
        active.last_seen = Set(Some(now));
        active.updated_at = Set(now);
        Ok(active.update(&self.db).await?)
    }

    /// # Errors
    /// On a database failure.
    pub async fn touch_charger(
        &self,
        charger_id: i32,
        seen: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        charger::Entity::update_many()
            .col_expr(charger::Column::LastSeen, Expr::value(seen))
            .filter(charger::Column::Id.eq(charger_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// # Errors
    /// On a database failure.
    pub async fn patch_charger(
        &self,
        charge_point_id: &str,
        patch: ChargerPatch,
    ) -> Result<Option<charger::Model>, StoreError> {
        let Some(row) = self.charger(charge_point_id).await? else {
            return Ok(None);
        };
        let mut active: charger::ActiveModel = row.into();
        if let Some(profile) = patch.security_profile {
            active.security_profile = Set(profile);
        }
        if let Some(hash) = patch.password_hash {
            active.password_hash = Set(hash);
        }
        if let Some(blocked) = patch.blocked {
            active.blocked = Set(blocked);
        }
        if let Some(notes) = patch.notes {
            active.notes = Set(notes);
        }
        if let Some(status) = patch.registration_status {
            active.registration_status = Set(status);
        }
        active.updated_at = Set(Utc::now());
        Ok(Some(active.update(&self.db).await?))
    }

    /// Stores a column of the charger (the last configuration read, diagnostics or firmware status).
    ///
    /// # Errors
    /// On a database failure.
    pub async fn set_charger_field(
        &self,
        charger_id: i32,
        field: ChargerField,
        value: Value,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut update = charger::Entity::update_many()
            .col_expr(charger::Column::UpdatedAt, Expr::value(now))
            .filter(charger::Column::Id.eq(charger_id));
        update = match field {
            ChargerField::Configuration => update
                .col_expr(charger::Column::Configuration, Expr::value(value))
                .col_expr(charger::Column::ConfigurationReadAt, Expr::value(now)),
            ChargerField::DiagnosticsStatus => update.col_expr(
                charger::Column::DiagnosticsStatus,
                Expr::value(value.as_str().map(str::to_owned)),
            ),
            ChargerField::FirmwareStatus => update.col_expr(
                charger::Column::FirmwareStatus,
                Expr::value(value.as_str().map(str::to_owned)),
            ),
        };
        update.exec(&self.db).await?;
        Ok(())
    }

    // ---- connectors -----------------------------------------------------------------------------------

    /// Current status per connector plus a history row, in one transaction.
    ///
    /// # Errors
    /// On a database failure.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_status(
        &self,
        charger_id: i32,
        connector_id: i32,
        status: &str,
        error_code: &str,
        info: Option<String>,
        vendor_error_code: Option<String>,
        status_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let current = connector::ActiveModel {
            charger_id: Set(charger_id),
            connector_id: Set(connector_id),
            status: Set(status.to_owned()),
            error_code: Set(error_code.to_owned()),
            info: Set(info.clone()),
            vendor_error_code: Set(vendor_error_code),
            status_at: Set(status_at),
            updated_at: Set(now),
            ..Default::default()
        };
        connector::Entity::insert(current)
            .on_conflict(
                OnConflict::columns([connector::Column::ChargerId, connector::Column::ConnectorId])
                    .update_columns([
                        connector::Column::Status,
                        connector::Column::ErrorCode,
                        connector::Column::Info,
                        connector::Column::VendorErrorCode,
                        connector::Column::StatusAt,
                        connector::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        connector_status_history::ActiveModel {
            charger_id: Set(charger_id),
            connector_id: Set(connector_id),
            status: Set(status.to_owned()),
            error_code: Set(error_code.to_owned()),
            info: Set(info),
            status_at: Set(status_at),
            received_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// # Errors
    /// On a database failure.
    pub async fn connectors_of(
        &self,
        charger_ids: &[i32],
    ) -> Result<Vec<connector::Model>, StoreError> {
        let mut all = Vec::new();
        for chunk in charger_ids.chunks(CHUNK) {
            all.extend(
                connector::Entity::find()
                    .filter(connector::Column::ChargerId.is_in(chunk.to_vec()))
                    .order_by_asc(connector::Column::ChargerId)
                    .order_by_asc(connector::Column::ConnectorId)
                    .all(&self.db)
                    .await?,
            );
        }
        Ok(all)
    }

    // ---- id tags --------------------------------------------------------------------------------------

    /// # Errors
    /// On a database failure.
    pub async fn id_tag(&self, tag: &str) -> Result<Option<id_tag::Model>, StoreError> {
        Ok(id_tag::Entity::find()
            .filter(id_tag::Column::Tag.eq(tag))
            .one(&self.db)
            .await?)
    }

    /// Case-insensitive lookup (RFID readers differ in how they print a UID).
    ///
    /// # Errors
    /// On a database failure.
    pub async fn id_tag_by_uid(&self, uid: &str) -> Result<Option<id_tag::Model>, StoreError> {
        use sea_orm::sea_query::{ExprTrait, Func};
        Ok(id_tag::Entity::find()
            .filter(ExprTrait::eq(
                Expr::expr(Func::upper(Expr::col(id_tag::Column::Tag))),
                uid.trim().to_uppercase(),
            ))
            .one(&self.db)
            .await?)
    }

    /// # Errors
    /// On a database failure.
    pub async fn list_id_tags(&self) -> Result<Vec<id_tag::Model>, StoreError> {
        Ok(id_tag::Entity::find()
            .order_by_asc(id_tag::Column::Tag)
            .all(&self.db)
            .await?)
    }

    /// Creates a tag; `None` when it exists already.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn create_id_tag(
        &self,
        tag: &str,
        fields: IdTagFields,
    ) -> Result<Option<id_tag::Model>, StoreError> {
        if self.id_tag(tag).await?.is_some() {
            return Ok(None);
        }
        let now = Utc::now();
        let row = id_tag::ActiveModel {
            tag: Set(tag.to_owned()),
            status: Set(fields.status.unwrap_or_else(|| "Accepted".into())),
            expires_at: Set(fields.expires_at.flatten()),
            parent: Set(fields.parent.flatten()),
            owner: Set(fields.owner.flatten()),
            account_id: Set(fields.account_id.flatten()),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        };
        Ok(Some(row.insert(&self.db).await?))
    }

    /// # Errors
    /// On a database failure.
    pub async fn patch_id_tag(
        &self,
        tag: &str,
        fields: IdTagFields,
    ) -> Result<Option<id_tag::Model>, StoreError> {
        let Some(row) = self.id_tag(tag).await? else {
            return Ok(None);
        };
        let mut active: id_tag::ActiveModel = row.into();
        if let Some(status) = fields.status {
            active.status = Set(status);
        }
        if let Some(expires_at) = fields.expires_at {
            active.expires_at = Set(expires_at);
        }
        if let Some(parent) = fields.parent {
            active.parent = Set(parent);
        }
        if let Some(owner) = fields.owner {
            active.owner = Set(owner);
        }
        if let Some(account_id) = fields.account_id {
            active.account_id = Set(account_id);
        }
        active.updated_at = Set(Utc::now());
        Ok(Some(active.update(&self.db).await?))
    }

    /// # Errors
    /// On a database failure.
    pub async fn delete_id_tag(&self, tag: &str) -> Result<bool, StoreError> {
        let result = id_tag::Entity::delete_many()
            .filter(id_tag::Column::Tag.eq(tag))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected > 0)
    }

    // ---- transactions ---------------------------------------------------------------------------------

    /// # Errors
    /// On a database failure.
    pub async fn active_transaction_for_tag(
        &self,
        tag: &str,
    ) -> Result<Option<transaction::Model>, StoreError> {
        Ok(transaction::Entity::find()
            .filter(transaction::Column::IdTag.eq(tag))
            .filter(transaction::Column::StoppedAt.is_null())
            .one(&self.db)
            .await?)
    }

    /// Inserts a transaction and returns its id; a re-sent start (same charger, connector, tag and time)
    /// returns the id it got the first time.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn start_transaction(
        &self,
        start: NewTransaction,
    ) -> Result<(i32, bool), StoreError> {
        let existing = transaction::Entity::find()
            .filter(transaction::Column::ChargerId.eq(start.charger_id))
            .filter(transaction::Column::ConnectorId.eq(start.connector_id))
            .filter(transaction::Column::IdTag.eq(start.id_tag.clone()))
            .filter(transaction::Column::StartedAt.eq(start.started_at))
            .one(&self.db)
            .await?;
        if let Some(row) = existing {
            return Ok((row.id, false));
        }
        let row = transaction::ActiveModel {
            charger_id: Set(start.charger_id),
            connector_id: Set(start.connector_id),
            id_tag: Set(start.id_tag),
            start_status: Set(start.start_status),
            meter_start: Set(start.meter_start),
            started_at: Set(start.started_at),
            reservation_id: Set(start.reservation_id),
            meter_stop: Set(None),
            stopped_at: Set(None),
            stop_id_tag: Set(None),
            stop_reason: Set(None),
            created_at: Set(Utc::now()),
            ..Default::default()
        }
        .insert(&self.db)
        .await?;
        Ok((row.id, true))
    }

    /// Closes a transaction (idempotent: a re-sent stop changes nothing) and stores its transaction data in
    /// the same database transaction. `None` when the id is unknown.
    ///
    /// # Errors
    /// On a database failure.
    #[allow(clippy::too_many_arguments)]
    pub async fn stop_transaction(
        &self,
        transaction_id: i32,
        meter_stop: i64,
        stopped_at: DateTime<Utc>,
        id_tag: Option<String>,
        reason: Option<String>,
        samples: &[MeterSample],
    ) -> Result<Option<transaction::Model>, StoreError> {
        let txn = self.db.begin().await?;
        // Write first: on SQLite a transaction that reads and then writes fails at once (SQLITE_BUSY) when
        // another connection wrote in between, while a first write waits for the lock like any other.
        transaction::Entity::update_many()
            .col_expr(transaction::Column::MeterStop, Expr::value(meter_stop))
            .col_expr(transaction::Column::StoppedAt, Expr::value(stopped_at))
            .col_expr(transaction::Column::StopIdTag, Expr::value(id_tag))
            .col_expr(
                transaction::Column::StopReason,
                Expr::value(reason.unwrap_or_else(|| "Local".into())),
            )
            .filter(transaction::Column::Id.eq(transaction_id))
            .filter(transaction::Column::StoppedAt.is_null())
            .exec(&txn)
            .await?;
        let Some(row) = transaction::Entity::find_by_id(transaction_id)
            .one(&txn)
            .await?
        else {
            return Ok(None);
        };
        insert_samples(
            &txn,
            row.charger_id,
            row.connector_id,
            Some(transaction_id),
            samples,
        )
        .await?;
        txn.commit().await?;
        Ok(Some(row))
    }

    /// # Errors
    /// On a database failure.
    pub async fn transaction(&self, id: i32) -> Result<Option<transaction::Model>, StoreError> {
        Ok(transaction::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// Newest first; filtered by charger and/or activity.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn transactions(
        &self,
        charger_id: Option<i32>,
        active: Option<bool>,
        limit: u64,
    ) -> Result<Vec<transaction::Model>, StoreError> {
        let mut query = transaction::Entity::find();
        if let Some(charger_id) = charger_id {
            query = query.filter(transaction::Column::ChargerId.eq(charger_id));
        }
        match active {
            Some(true) => query = query.filter(transaction::Column::StoppedAt.is_null()),
            Some(false) => query = query.filter(transaction::Column::StoppedAt.is_not_null()),
            None => {}
        }
        Ok(query
            .order_by_desc(transaction::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// # Errors
    /// On a database failure.
    pub async fn active_transactions_of(
        &self,
        charger_id: i32,
    ) -> Result<Vec<transaction::Model>, StoreError> {
        self.transactions(Some(charger_id), Some(true), 100).await
    }

    // ---- meter values ---------------------------------------------------------------------------------

    /// One row per sampled value; re-sent samples are skipped.
    ///
    /// # Errors
    /// On a database failure; then nothing of the message is stored.
    pub async fn insert_meter_values(
        &self,
        charger_id: i32,
        connector_id: i32,
        transaction_id: Option<i32>,
        samples: &[MeterSample],
    ) -> Result<u64, StoreError> {
        self.meters
            .write(MeterBatch {
                charger_id,
                connector_id,
                transaction_id,
                samples: samples.to_vec(),
            })
            .await
    }

    /// # Errors
    /// On a database failure.
    pub async fn meter_values_of_transaction(
        &self,
        transaction_id: i32,
    ) -> Result<Vec<meter_value::Model>, StoreError> {
        Ok(meter_value::Entity::find()
            .filter(meter_value::Column::TransactionId.eq(transaction_id))
            .order_by_asc(meter_value::Column::Timestamp)
            .order_by_asc(meter_value::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// The newest sample of each measurand/phase of a charger (up to `limit` rows scanned).
    ///
    /// # Errors
    /// On a database failure.
    pub async fn latest_meter_values(
        &self,
        charger_id: i32,
        limit: u64,
    ) -> Result<Vec<meter_value::Model>, StoreError> {
        let rows = meter_value::Entity::find()
            .filter(meter_value::Column::ChargerId.eq(charger_id))
            .order_by_desc(meter_value::Column::Timestamp)
            .order_by_desc(meter_value::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        let mut seen = std::collections::HashSet::new();
        Ok(rows
            .into_iter()
            .filter(|r| {
                seen.insert((
                    r.connector_id,
                    r.measurand.clone(),
                    r.phase.clone(),
                    r.location.clone(),
                ))
            })
            .collect())
    }

    // ---- message log ----------------------------------------------------------------------------------

    /// Appends one frame to the message log; returns its row id (for pairing a response with its request).
    ///
    /// # Errors
    /// On a database failure.
    #[allow(clippy::too_many_arguments)]
    pub async fn log_ocpp_message(
        &self,
        charger_id: i32,
        direction: &str,
        message_type: &str,
        action: Option<&str>,
        message_id: &str,
        payload: Value,
        request_id: Option<i64>,
    ) -> Result<i64, StoreError> {
        let row = ocpp_message::ActiveModel {
            charger_id: Set(charger_id),
            direction: Set(direction.to_owned()),
            message_type: Set(message_type.to_owned()),
            action: Set(action.map(str::to_owned)),
            message_id: Set(message_id.chars().take(64).collect()),
            payload: Set(payload),
            request_id: Set(request_id),
            at: Set(Utc::now()),
            ..Default::default()
        };
        // Group commit on SQLite: every CALL and answer is logged, so these are the most frequent writes.
        self.ocpp_log.write(MessageLogEntry(row)).await
    }

    /// Newest first, keyset-paginated by id.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn ocpp_messages(
        &self,
        charger_id: i32,
        filter: MessageFilter,
    ) -> Result<(Vec<ocpp_message::Model>, Option<i64>), StoreError> {
        let mut query =
            ocpp_message::Entity::find().filter(ocpp_message::Column::ChargerId.eq(charger_id));
        if let Some(direction) = filter.direction {
            query = query.filter(ocpp_message::Column::Direction.eq(direction));
        }
        if let Some(action) = filter.action {
            query = query.filter(ocpp_message::Column::Action.eq(action));
        }
        if let Some(before) = filter.before {
            query = query.filter(ocpp_message::Column::Id.lt(before));
        }
        let mut rows = query
            .order_by_desc(ocpp_message::Column::Id)
            .limit(filter.limit + 1)
            .all(&self.db)
            .await?;
        let next = if rows.len() as u64 > filter.limit {
            rows.truncate(filter.limit as usize);
            rows.last().map(|r| r.id)
        } else {
            None
        };
        Ok((rows, next))
    }

    /// The responses to the given request rows (for pairing in the listing).
    ///
    /// # Errors
    /// On a database failure.
    pub async fn ocpp_responses_to(
        &self,
        request_ids: &[i64],
    ) -> Result<Vec<ocpp_message::Model>, StoreError> {
        let mut all = Vec::new();
        for chunk in request_ids.chunks(CHUNK) {
            all.extend(
                ocpp_message::Entity::find()
                    .filter(ocpp_message::Column::RequestId.is_in(chunk.to_vec()))
                    .all(&self.db)
                    .await?,
            );
        }
        Ok(all)
    }

    /// # Errors
    /// On a database failure.
    pub async fn ocpp_messages_by_id(
        &self,
        ids: &[i64],
    ) -> Result<Vec<ocpp_message::Model>, StoreError> {
        let mut all = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            all.extend(
                ocpp_message::Entity::find()
                    .filter(ocpp_message::Column::Id.is_in(chunk.to_vec()))
                    .all(&self.db)
                    .await?,
            );
        }
        Ok(all)
    }

    /// Deletes log rows older than `cutoff`; returns how many.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn prune_ocpp_messages(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let result = ocpp_message::Entity::delete_many()
            .filter(Condition::all().add(ocpp_message::Column::At.lt(cutoff)))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }
}

/// Which single charger column [`Store::set_charger_field`] writes.
#[derive(Clone, Copy, Debug)]
pub enum ChargerField {
    Configuration,
    DiagnosticsStatus,
    FirmwareStatus,
}

async fn insert_samples<C: sea_orm::ConnectionTrait>(
    db: &C,
    charger_id: i32,
    connector_id: i32,
    transaction_id: Option<i32>,
    samples: &[MeterSample],
) -> Result<u64, sea_orm::DbErr> {
    let received_at = Utc::now();
    let mut inserted = 0;
    for chunk in samples.chunks(CHUNK) {
        let rows = chunk.iter().map(|s| meter_value::ActiveModel {
            charger_id: Set(charger_id),
            connector_id: Set(connector_id),
            transaction_id: Set(transaction_id),
            timestamp: Set(s.timestamp),
            value: Set(s.value.chars().take(64).collect()),
            numeric: Set(s.value.trim().parse::<f64>().ok().filter(|v| v.is_finite())),
            measurand: Set(s.measurand.clone()),
            phase: Set(s.phase.clone()),
            unit: Set(s.unit.clone()),
            context: Set(s.context.clone()),
            location: Set(s.location.clone()),
            format: Set(s.format.clone()),
            received_at: Set(received_at),
            ..Default::default()
        });
        let result = meter_value::Entity::insert_many(rows)
            .on_conflict_do_nothing_on([
                meter_value::Column::ChargerId,
                meter_value::Column::ConnectorId,
                meter_value::Column::Timestamp,
                meter_value::Column::Measurand,
                meter_value::Column::Phase,
                meter_value::Column::Location,
                meter_value::Column::Context,
            ])
            .exec_without_returning(db)
            .await?;
        if let sea_orm::TryInsertResult::Inserted(n) = result {
            inserted += n;
        }
    }
    Ok(inserted)
}

/// One row of the OCPP message log, written through the group-commit writer (see `super::group`).
#[derive(Debug)]
pub(crate) struct MessageLogEntry(pub(crate) ocpp_message::ActiveModel);

impl super::group::GroupOp for MessageLogEntry {
    type Out = i64;

    async fn apply<'a>(
        &'a self,
        txn: &'a sea_orm::DatabaseTransaction,
    ) -> Result<i64, sea_orm::DbErr> {
        Ok(self.0.clone().insert(txn).await?.id)
    }
}

/// One MeterValues message's samples, written through the group-commit writer (see `super::group`).
#[derive(Debug)]
pub(crate) struct MeterBatch {
    charger_id: i32,
    connector_id: i32,
    transaction_id: Option<i32>,
    samples: Vec<MeterSample>,
}

impl super::group::GroupOp for MeterBatch {
    type Out = u64;

    fn weight(&self) -> usize {
        self.samples.len().max(1)
    }

    async fn apply<'a>(
        &'a self,
        txn: &'a sea_orm::DatabaseTransaction,
    ) -> Result<u64, sea_orm::DbErr> {
        insert_samples(
            txn,
            self.charger_id,
            self.connector_id,
            self.transaction_id,
            &self.samples,
        )
        .await
    }
}
