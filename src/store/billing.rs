//! Rooms and their balances, TOTP secrets, endpoints, appliances, appliance runs and bank payments.
//!
//! Money moves only inside one transaction per operation, and every transaction that moves it starts with a
//! conditional write (`UPDATE … WHERE balance >= :cost`, `WHERE state = 'running'`, …). On PostgreSQL the
//! write locks the row, and a concurrent writer re-checks the condition after waiting; on SQLite the first
//! write takes the database's write lock before anything was read, so two transactions never both read and
//! then both try to upgrade (SQLITE_BUSY). Locks are always taken in the order appliance state → room, and
//! run → appliance state → room, so the two paths cannot deadlock each other.

use std::collections::HashSet;

use chrono::Utc;
use entity::{
    appliance, appliance_state, endpoint, payment_invalid, payment_valid, room, room_adjustment,
    room_totp, run,
};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction,
    DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, SqlErr, TransactionTrait,
};

use super::{Store, StoreError};
use crate::billing::payments::{BankTransaction, ImportSummary, InvalidReason};

/// Run states as written.
pub const RUNNING: &str = "running";
pub const FINISHED: &str = "finished";
pub const ABORTED: &str = "aborted";

/// Longest stored reference / currency text; longer bank values are cut (they are only kept for people).
const MAX_REFERENCE_CHARS: usize = 64;
const MAX_CURRENCY_CHARS: usize = 8;

fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

fn cut(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[derive(Debug)]
pub enum AdjustOutcome {
    Done(room::Model, room_adjustment::Model),
    NotFound,
    /// The balance would go below zero; nothing changed.
    WouldGoNegative(room::Model),
}

#[derive(Debug)]
pub enum StartOutcome {
    /// The run and the room's balance after the reservation.
    Started(run::Model, i64),
    /// The appliance on that endpoint is in use.
    Occupied,
    /// The balance (shown) does not cover the cost.
    InsufficientFunds(i64),
    UnknownRoom,
}

#[derive(Debug)]
pub enum FinishOutcome {
    /// The finished (or aborted) run, with its refund.
    Finished(run::Model),
    /// Finished or aborted already; nothing changed.
    NotRunning(run::Model),
    NotFound,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ApplianceDelete {
    Deleted,
    NotFound,
    /// A run uses it right now.
    Busy,
}

/// What one import did: the summary, and the rows it wrote (for events).
#[derive(Debug, Default)]
pub struct ImportOutcome {
    pub summary: ImportSummary,
    pub credited: Vec<payment_valid::Model>,
    pub rejected: Vec<payment_invalid::Model>,
}

/// Makes concurrent imports run one after the other, so the duplicate check across both payment tables
/// cannot be raced: an advisory lock on PostgreSQL; on SQLite a write that matches nothing but takes the
/// database's write lock at once.
async fn serialize_imports(txn: &DatabaseTransaction) -> Result<(), DbErr> {
    let sql = match txn.get_database_backend() {
        DbBackend::Postgres => "SELECT pg_advisory_xact_lock(620261122)",
        _ => "UPDATE payments_valid SET id = id WHERE id < 0",
    };
    txn.execute_unprepared(sql).await?;
    Ok(())
}

/// A no-op write on a room row: locks it (PostgreSQL) or takes the write lock (SQLite) before it is read.
/// `false` when the room does not exist.
async fn lock_room(txn: &DatabaseTransaction, key: i64) -> Result<bool, DbErr> {
    let locked = room::Entity::update_many()
        .col_expr(room::Column::Balance, Expr::col(room::Column::Balance))
        .filter(room::Column::Key.eq(key))
        .exec(txn)
        .await?;
    Ok(locked.rows_affected > 0)
}

impl Store {
    // ---- rooms ----------------------------------------------------------------------------------------

    /// # Errors
    /// On a database failure.
    pub async fn room(&self, key: i64) -> Result<Option<room::Model>, StoreError> {
        Ok(room::Entity::find_by_id(key).one(&self.db).await?)
    }

    /// # Errors
    /// On a database failure.
    pub async fn list_rooms(&self) -> Result<Vec<room::Model>, StoreError> {
        Ok(room::Entity::find()
            .order_by_asc(room::Column::Key)
            .all(&self.db)
            .await?)
    }

    /// Creates a room; a non-zero opening balance is recorded as an adjustment. `None` when the key exists.
    ///
    /// # Errors
    /// On a database failure; then nothing is written.
    #[tracing::instrument(skip(self))]
    pub async fn create_room(
        &self,
        key: i64,
        balance: i64,
    ) -> Result<Option<room::Model>, StoreError> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let inserted = room::ActiveModel {
            key: Set(key),
            balance: Set(balance),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&txn)
        .await;
        let row = match inserted {
            Ok(row) => row,
            Err(err) if is_unique_violation(&err) => {
                txn.rollback().await?;
                return Ok(None);
            }
            Err(err) => return Err(err.into()),
        };
        if balance != 0 {
            insert_adjustment(&txn, key, balance, "opening balance").await?;
        }
        txn.commit().await?;
        Ok(Some(row))
    }

    /// Sets a room's balance, recording the difference as an adjustment. `None` when the room is unknown.
    ///
    /// # Errors
    /// On a database failure; then nothing is written.
    #[tracing::instrument(skip(self, reason))]
    pub async fn set_room_balance(
        &self,
        key: i64,
        balance: i64,
        reason: &str,
    ) -> Result<Option<room::Model>, StoreError> {
        let txn = self.db.begin().await?;
        if !lock_room(&txn, key).await? {
            txn.rollback().await?;
            return Ok(None);
        }
        let Some(before) = room::Entity::find_by_id(key).one(&txn).await? else {
            txn.rollback().await?;
            return Ok(None);
        };
        let delta = balance - before.balance;
        let mut active: room::ActiveModel = before.into();
        active.balance = Set(balance);
        active.updated_at = Set(Utc::now());
        let row = active.update(&txn).await?;
        if delta != 0 {
            insert_adjustment(&txn, key, delta, reason).await?;
        }
        txn.commit().await?;
        Ok(Some(row))
    }

    /// Adds `amount` (signed cents) to a room's balance, unless it would go below zero.
    ///
    /// # Errors
    /// On a database failure; then nothing is written.
    #[tracing::instrument(skip(self, reason))]
    pub async fn adjust_room(
        &self,
        key: i64,
        amount: i64,
        reason: &str,
    ) -> Result<AdjustOutcome, StoreError> {
        let txn = self.db.begin().await?;
        // `balance >= -amount` rather than `balance + amount >= 0`: the latter could overflow in SQL.
        let changed = room::Entity::update_many()
            .col_expr(
                room::Column::Balance,
                Expr::col(room::Column::Balance).add(amount),
            )
            .col_expr(room::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(room::Column::Key.eq(key))
            .filter(room::Column::Balance.gte(amount.saturating_neg()))
            .exec(&txn)
            .await?;
        if changed.rows_affected == 0 {
            let row = room::Entity::find_by_id(key).one(&txn).await?;
            txn.rollback().await?;
            return Ok(match row {
                Some(row) => AdjustOutcome::WouldGoNegative(row),
                None => AdjustOutcome::NotFound,
            });
        }
        let adjustment = insert_adjustment(&txn, key, amount, reason).await?;
        let row = room::Entity::find_by_id(key)
            .one(&txn)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(format!("room {key}")))?;
        txn.commit().await?;
        Ok(AdjustOutcome::Done(row, adjustment))
    }

    /// Newest first.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn room_adjustments(
        &self,
        key: i64,
    ) -> Result<Vec<room_adjustment::Model>, StoreError> {
        Ok(room_adjustment::Entity::find()
            .filter(room_adjustment::Column::RoomKey.eq(key))
            .order_by_desc(room_adjustment::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// Deletes a room and its TOTP secret; its runs, adjustments and payments stay as history. `false` when
    /// unknown.
    ///
    /// # Errors
    /// On a database failure; then nothing is deleted.
    #[tracing::instrument(skip(self))]
    pub async fn delete_room(&self, key: i64) -> Result<bool, StoreError> {
        let txn = self.db.begin().await?;
        room_totp::Entity::delete_by_id(key).exec(&txn).await?;
        let deleted = room::Entity::delete_by_id(key).exec(&txn).await?;
        txn.commit().await?;
        Ok(deleted.rows_affected > 0)
    }

    /// Replaces a room's TOTP secret (and forgets the last accepted step). `false` when the room is unknown.
    ///
    /// # Errors
    /// On a database failure; then the old secret stays.
    #[tracing::instrument(skip(self, secret))]
    pub async fn rotate_room_totp(&self, key: i64, secret: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin().await?;
        if !lock_room(&txn, key).await? {
            txn.rollback().await?;
            return Ok(false);
        }
        room_totp::Entity::delete_by_id(key).exec(&txn).await?;
        room_totp::ActiveModel {
            room_key: Set(key),
            secret: Set(secret.to_owned()),
            last_step: Set(0),
            failures: Set(0),
            failure_window: Set(0),
            created_at: Set(Utc::now()),
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// # Errors
    /// On a database failure.
    pub async fn room_totp(&self, key: i64) -> Result<Option<room_totp::Model>, StoreError> {
        Ok(room_totp::Entity::find_by_id(key).one(&self.db).await?)
    }

    /// Records `step` as the room's last accepted TOTP step, only if it is later than the last one: `false`
    /// means the code (or an earlier one) was used already.
    ///
    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self))]
    pub async fn accept_totp_step(&self, key: i64, step: i64) -> Result<bool, StoreError> {
        let accepted = room_totp::Entity::update_many()
            .col_expr(room_totp::Column::LastStep, Expr::value(step))
            .filter(room_totp::Column::RoomKey.eq(key))
            .filter(room_totp::Column::LastStep.lt(step))
            .exec(&self.db)
            .await?;
        Ok(accepted.rows_affected > 0)
    }

    /// Claims one code attempt for a room in throttling window `window`: `false` when `max` attempts were
    /// claimed in that window already (or the room has no secret). Claimed before the code is checked, in one
    /// conditional write, so parallel guesses cannot all slip past the limit.
    ///
    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self))]
    pub async fn claim_totp_attempt(
        &self,
        key: i64,
        window: i64,
        max: i32,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin().await?;
        // A new window starts from zero.
        room_totp::Entity::update_many()
            .col_expr(room_totp::Column::Failures, Expr::value(0))
            .col_expr(room_totp::Column::FailureWindow, Expr::value(window))
            .filter(room_totp::Column::RoomKey.eq(key))
            .filter(room_totp::Column::FailureWindow.ne(window))
            .exec(&txn)
            .await?;
        let claimed = room_totp::Entity::update_many()
            .col_expr(
                room_totp::Column::Failures,
                Expr::col(room_totp::Column::Failures).add(1),
            )
            .filter(room_totp::Column::RoomKey.eq(key))
            .filter(room_totp::Column::Failures.lt(max))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(claimed.rows_affected > 0)
    }

    /// Gives back an attempt claimed with [`Store::claim_totp_attempt`] whose code was right, so only wrong
    /// codes count.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn release_totp_attempt(&self, key: i64, window: i64) -> Result<(), StoreError> {
        room_totp::Entity::update_many()
            .col_expr(
                room_totp::Column::Failures,
                Expr::col(room_totp::Column::Failures).sub(1),
            )
            .filter(room_totp::Column::RoomKey.eq(key))
            .filter(room_totp::Column::FailureWindow.eq(window))
            .filter(room_totp::Column::Failures.gt(0))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    // ---- endpoints ------------------------------------------------------------------------------------

    /// # Errors
    /// On a database failure.
    pub async fn endpoint(&self, id: i32) -> Result<Option<endpoint::Model>, StoreError> {
        Ok(endpoint::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// # Errors
    /// On a database failure.
    pub async fn list_endpoints(&self) -> Result<Vec<endpoint::Model>, StoreError> {
        Ok(endpoint::Entity::find()
            .order_by_asc(endpoint::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// `None` when the id exists.
    ///
    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self))]
    pub async fn create_endpoint(
        &self,
        id: i32,
        name: &str,
    ) -> Result<Option<endpoint::Model>, StoreError> {
        let now = Utc::now();
        let inserted = endpoint::ActiveModel {
            id: Set(id),
            name: Set(name.to_owned()),
            token_version: Set(1),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&self.db)
        .await;
        match inserted {
            Ok(row) => Ok(Some(row)),
            Err(err) if is_unique_violation(&err) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Renames an endpoint and/or bumps its token version (invalidating every token it holds). `None` when
    /// unknown.
    ///
    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self))]
    pub async fn patch_endpoint(
        &self,
        id: i32,
        name: Option<String>,
        bump_token_version: bool,
    ) -> Result<Option<endpoint::Model>, StoreError> {
        let mut update = endpoint::Entity::update_many()
            .col_expr(endpoint::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(endpoint::Column::Id.eq(id));
        if let Some(name) = name {
            update = update.col_expr(endpoint::Column::Name, Expr::value(name));
        }
        if bump_token_version {
            // In SQL, so two concurrent bumps both count.
            update = update.col_expr(
                endpoint::Column::TokenVersion,
                Expr::col(endpoint::Column::TokenVersion).add(1),
            );
        }
        if update.exec(&self.db).await?.rows_affected == 0 {
            return Ok(None);
        }
        self.endpoint(id).await
    }

    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self))]
    pub async fn delete_endpoint(&self, id: i32) -> Result<bool, StoreError> {
        Ok(endpoint::Entity::delete_by_id(id)
            .exec(&self.db)
            .await?
            .rows_affected
            > 0)
    }

    // ---- appliances -----------------------------------------------------------------------------------

    /// # Errors
    /// On a database failure.
    pub async fn appliance(&self, name: &str) -> Result<Option<appliance::Model>, StoreError> {
        Ok(appliance::Entity::find_by_id(name.to_owned())
            .one(&self.db)
            .await?)
    }

    /// # Errors
    /// On a database failure.
    pub async fn list_appliances(&self) -> Result<Vec<appliance::Model>, StoreError> {
        Ok(appliance::Entity::find()
            .order_by_asc(appliance::Column::Name)
            .all(&self.db)
            .await?)
    }

    /// `None` when the name exists.
    ///
    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self))]
    pub async fn create_appliance(
        &self,
        name: &str,
        price_per_unit: i64,
    ) -> Result<Option<appliance::Model>, StoreError> {
        let now = Utc::now();
        let inserted = appliance::ActiveModel {
            name: Set(name.to_owned()),
            price_per_unit: Set(price_per_unit),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&self.db)
        .await;
        match inserted {
            Ok(row) => Ok(Some(row)),
            Err(err) if is_unique_violation(&err) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// `None` when unknown.
    ///
    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self))]
    pub async fn patch_appliance(
        &self,
        name: &str,
        price_per_unit: Option<i64>,
    ) -> Result<Option<appliance::Model>, StoreError> {
        let mut update = appliance::Entity::update_many()
            .col_expr(appliance::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(appliance::Column::Name.eq(name));
        if let Some(price) = price_per_unit {
            update = update.col_expr(appliance::Column::PricePerUnit, Expr::value(price));
        }
        if update.exec(&self.db).await?.rows_affected == 0 {
            return Ok(None);
        }
        self.appliance(name).await
    }

    /// Deletes an appliance and its idle occupancy rows; refused while a run uses it.
    ///
    /// # Errors
    /// On a database failure; then nothing is deleted.
    #[tracing::instrument(skip(self))]
    pub async fn delete_appliance(&self, name: &str) -> Result<ApplianceDelete, StoreError> {
        let txn = self.db.begin().await?;
        // Idle rows first: a write, so SQLite's write lock is held before the busy check reads.
        appliance_state::Entity::delete_many()
            .filter(appliance_state::Column::ApplianceName.eq(name))
            .filter(appliance_state::Column::Occupied.eq(false))
            .exec(&txn)
            .await?;
        let busy = appliance_state::Entity::find()
            .filter(appliance_state::Column::ApplianceName.eq(name))
            .one(&txn)
            .await?
            .is_some();
        if busy {
            txn.rollback().await?;
            return Ok(ApplianceDelete::Busy);
        }
        let deleted = appliance::Entity::delete_by_id(name.to_owned())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(if deleted.rows_affected > 0 {
            ApplianceDelete::Deleted
        } else {
            ApplianceDelete::NotFound
        })
    }

    // ---- runs -----------------------------------------------------------------------------------------

    /// Starts a run: claims the appliance on the endpoint, then reserves `cost` cents from the room, in one
    /// transaction. Nothing is written unless both succeed.
    ///
    /// # Errors
    /// On a database failure; then nothing is written.
    #[tracing::instrument(skip(self))]
    pub async fn start_run(
        &self,
        room_key: i64,
        endpoint_id: i32,
        appliance_name: &str,
        units: i64,
        cost: i64,
    ) -> Result<StartOutcome, StoreError> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        appliance_state::Entity::insert(appliance_state::ActiveModel {
            endpoint_id: Set(endpoint_id),
            appliance_name: Set(appliance_name.to_owned()),
            occupied: Set(false),
            run_id: Set(None),
            updated_at: Set(now),
        })
        .on_conflict_do_nothing_on([
            appliance_state::Column::EndpointId,
            appliance_state::Column::ApplianceName,
        ])
        .exec_without_returning(&txn)
        .await?;
        let claimed = appliance_state::Entity::update_many()
            .col_expr(appliance_state::Column::Occupied, Expr::value(true))
            .col_expr(appliance_state::Column::UpdatedAt, Expr::value(now))
            .filter(appliance_state::Column::EndpointId.eq(endpoint_id))
            .filter(appliance_state::Column::ApplianceName.eq(appliance_name))
            .filter(appliance_state::Column::Occupied.eq(false))
            .exec(&txn)
            .await?;
        if claimed.rows_affected == 0 {
            txn.rollback().await?;
            return Ok(StartOutcome::Occupied);
        }
        let paid = room::Entity::update_many()
            .col_expr(
                room::Column::Balance,
                Expr::col(room::Column::Balance).sub(cost),
            )
            .col_expr(room::Column::UpdatedAt, Expr::value(now))
            .filter(room::Column::Key.eq(room_key))
            .filter(room::Column::Balance.gte(cost))
            .exec(&txn)
            .await?;
        if paid.rows_affected == 0 {
            let row = room::Entity::find_by_id(room_key).one(&txn).await?;
            txn.rollback().await?;
            return Ok(match row {
                Some(row) => StartOutcome::InsufficientFunds(row.balance),
                None => StartOutcome::UnknownRoom,
            });
        }
        let run = run::ActiveModel {
            room_key: Set(room_key),
            endpoint_id: Set(endpoint_id),
            appliance_name: Set(appliance_name.to_owned()),
            state: Set(RUNNING.to_owned()),
            initial_units: Set(units),
            initial_price: Set(cost),
            final_units: Set(None),
            final_price: Set(None),
            refund: Set(None),
            started_at: Set(now),
            finished_at: Set(None),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        appliance_state::Entity::update_many()
            .col_expr(appliance_state::Column::RunId, Expr::value(run.id))
            .filter(appliance_state::Column::EndpointId.eq(endpoint_id))
            .filter(appliance_state::Column::ApplianceName.eq(appliance_name))
            .exec(&txn)
            .await?;
        let balance = room::Entity::find_by_id(room_key)
            .one(&txn)
            .await?
            .map(|r| r.balance)
            .ok_or_else(|| DbErr::RecordNotFound(format!("room {room_key}")))?;
        txn.commit().await?;
        Ok(StartOutcome::Started(run, balance))
    }

    /// Finishes (or aborts) a running run: records the final units and price, refunds the reserved amount
    /// minus the final price (never more than was reserved, never less than nothing), frees the appliance.
    /// A run that is not running any more is left as it is.
    ///
    /// # Errors
    /// On a database failure; then nothing is written.
    #[tracing::instrument(skip(self))]
    pub async fn finish_run(
        &self,
        run_id: i32,
        final_units: i64,
        final_price: i64,
        aborted: bool,
    ) -> Result<FinishOutcome, StoreError> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let closed = run::Entity::update_many()
            .col_expr(
                run::Column::State,
                Expr::value(if aborted { ABORTED } else { FINISHED }),
            )
            .col_expr(run::Column::FinalUnits, Expr::value(final_units))
            .col_expr(run::Column::FinalPrice, Expr::value(final_price))
            .col_expr(run::Column::FinishedAt, Expr::value(now))
            .filter(run::Column::Id.eq(run_id))
            .filter(run::Column::State.eq(RUNNING))
            .exec(&txn)
            .await?;
        if closed.rows_affected == 0 {
            let row = run::Entity::find_by_id(run_id).one(&txn).await?;
            txn.rollback().await?;
            return Ok(match row {
                Some(row) => FinishOutcome::NotRunning(row),
                None => FinishOutcome::NotFound,
            });
        }
        let row = run::Entity::find_by_id(run_id)
            .one(&txn)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(format!("run {run_id}")))?;
        let refund = refund_of(row.initial_price, final_price);
        let mut active: run::ActiveModel = row.clone().into();
        active.refund = Set(Some(refund));
        let row = active.update(&txn).await?;
        appliance_state::Entity::update_many()
            .col_expr(appliance_state::Column::Occupied, Expr::value(false))
            .col_expr(
                appliance_state::Column::RunId,
                Expr::value(Option::<i32>::None),
            )
            .col_expr(appliance_state::Column::UpdatedAt, Expr::value(now))
            .filter(appliance_state::Column::EndpointId.eq(row.endpoint_id))
            .filter(appliance_state::Column::ApplianceName.eq(row.appliance_name.as_str()))
            .filter(appliance_state::Column::RunId.eq(run_id))
            .exec(&txn)
            .await?;
        if refund > 0 {
            room::Entity::update_many()
                .col_expr(
                    room::Column::Balance,
                    Expr::col(room::Column::Balance).add(refund),
                )
                .col_expr(room::Column::UpdatedAt, Expr::value(now))
                .filter(room::Column::Key.eq(row.room_key))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(FinishOutcome::Finished(row))
    }

    /// Newest first, filtered by room and/or state.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn list_runs(
        &self,
        room_key: Option<i64>,
        state: Option<&str>,
    ) -> Result<Vec<run::Model>, StoreError> {
        let mut query = run::Entity::find();
        if let Some(key) = room_key {
            query = query.filter(run::Column::RoomKey.eq(key));
        }
        if let Some(state) = state {
            query = query.filter(run::Column::State.eq(state));
        }
        Ok(query.order_by_desc(run::Column::Id).all(&self.db).await?)
    }

    // ---- payments -------------------------------------------------------------------------------------

    /// Imports bank transactions in one transaction: skips ids seen before (in either payment table, or
    /// earlier in this batch), credits rooms with valid ones, records the rest as invalid with the reason.
    /// Importing the same batch again changes nothing.
    ///
    /// # Errors
    /// On a database failure; then nothing is written.
    #[tracing::instrument(skip(self, transactions), fields(count = transactions.len()))]
    pub async fn import_payments(
        &self,
        transactions: &[BankTransaction],
        currency: &str,
    ) -> Result<ImportOutcome, StoreError> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        serialize_imports(&txn).await?;
        let ids: Vec<String> = transactions.iter().map(|t| t.id.clone()).collect();
        let mut seen: HashSet<String> = HashSet::new();
        for chunk in ids.chunks(400) {
            for row in payment_valid::Entity::find()
                .filter(payment_valid::Column::TransactionId.is_in(chunk.to_vec()))
                .all(&txn)
                .await?
            {
                seen.insert(row.transaction_id);
            }
            for row in payment_invalid::Entity::find()
                .filter(payment_invalid::Column::TransactionId.is_in(chunk.to_vec()))
                .all(&txn)
                .await?
            {
                seen.insert(row.transaction_id);
            }
        }
        let mut outcome = ImportOutcome::default();
        for transaction in transactions {
            if !seen.insert(transaction.id.clone()) {
                outcome.summary.duplicates += 1;
                continue;
            }
            let reference = cut(&transaction.reference, MAX_REFERENCE_CHARS);
            let currency_text = cut(transaction.currency.trim(), MAX_CURRENCY_CHARS);
            let reason = match transaction.classify(currency) {
                Ok((room_key, amount)) => {
                    let credited = room::Entity::update_many()
                        .col_expr(
                            room::Column::Balance,
                            Expr::col(room::Column::Balance).add(amount),
                        )
                        .col_expr(room::Column::UpdatedAt, Expr::value(now))
                        .filter(room::Column::Key.eq(room_key))
                        .exec(&txn)
                        .await?;
                    if credited.rows_affected > 0 {
                        let row = payment_valid::ActiveModel {
                            transaction_id: Set(transaction.id.clone()),
                            room_key: Set(room_key),
                            amount: Set(amount),
                            currency: Set(currency_text),
                            reference: Set(reference),
                            created_at: Set(now),
                            ..Default::default()
                        }
                        .insert(&txn)
                        .await?;
                        outcome.summary.imported += 1;
                        outcome.credited.push(row);
                        continue;
                    }
                    InvalidReason::UnknownRoom
                }
                Err(reason) => reason,
            };
            let row = payment_invalid::ActiveModel {
                transaction_id: Set(transaction.id.clone()),
                amount: Set(transaction.amount.as_ref().ok().copied()),
                currency: Set(currency_text),
                reference: Set(reference),
                reason: Set(reason.as_str().to_owned()),
                created_at: Set(now),
                ..Default::default()
            }
            .insert(&txn)
            .await?;
            outcome.summary.invalid += 1;
            outcome.rejected.push(row);
        }
        txn.commit().await?;
        Ok(outcome)
    }

    /// Newest first.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn valid_payments(&self) -> Result<Vec<payment_valid::Model>, StoreError> {
        Ok(payment_valid::Entity::find()
            .order_by_desc(payment_valid::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// Newest first.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn invalid_payments(&self) -> Result<Vec<payment_invalid::Model>, StoreError> {
        Ok(payment_invalid::Entity::find()
            .order_by_desc(payment_invalid::Column::Id)
            .all(&self.db)
            .await?)
    }
}

async fn insert_adjustment(
    txn: &DatabaseTransaction,
    key: i64,
    amount: i64,
    reason: &str,
) -> Result<room_adjustment::Model, DbErr> {
    room_adjustment::ActiveModel {
        room_key: Set(key),
        amount: Set(amount),
        reason: Set(reason.to_owned()),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(txn)
    .await
}

/// What a finished run gives back: the reserved amount minus the final price, never negative (a final price
/// above the reservation is not charged on top) and never more than was reserved (a negative final price
/// does not mint money).
pub fn refund_of(reserved: i64, final_price: i64) -> i64 {
    reserved
        .saturating_sub(final_price)
        .clamp(0, Ord::max(reserved, 0))
}

#[cfg(test)]
mod tests {
    use super::refund_of;

    #[test]
    fn refunds_are_capped_to_the_reservation() {
        for (reserved, final_price, refund) in [
            (2000, 1500, 500),
            (2000, 2000, 0),
            (2000, 2500, 0),
            (2000, 0, 2000),
            (2000, -500, 2000),
            (0, 0, 0),
            (2000, i64::MIN, 2000),
        ] {
            assert_eq!(
                refund_of(reserved, final_price),
                refund,
                "{reserved} {final_price}"
            );
        }
    }
}
