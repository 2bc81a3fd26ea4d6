//! The durable command queue: commands stored for offline devices, claimed by exactly one node when the
//! device comes back (a conditional update on `claim_token`, never an in-memory lock), re-queued when the
//! device drops mid-command if they are safe to repeat.

use chrono::{DateTime, Utc};
use entity::command;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use super::{CommandState, Store, StoreError};

/// Why a cancel did not happen.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancel {
    Cancelled,
    /// It is no longer waiting (its current state).
    NotQueued(String),
    Unknown,
}

impl Store {
    /// Commands waiting for a device (queued and not claimed).
    ///
    /// # Errors
    /// On a database failure.
    pub async fn count_queued(&self, device: &str) -> Result<u64, StoreError> {
        Ok(command::Entity::find()
            .filter(command::Column::Device.eq(device))
            .filter(command::Column::State.eq(CommandState::Queued.as_str()))
            .filter(queued_delivery())
            .count(&self.db)
            .await?)
    }

    /// Newest first, optionally filtered.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn list_commands(
        &self,
        device: Option<&str>,
        state: Option<&str>,
        limit: u64,
    ) -> Result<Vec<command::Model>, StoreError> {
        let mut query = command::Entity::find();
        if let Some(device) = device {
            query = query.filter(command::Column::Device.eq(device));
        }
        if let Some(state) = state {
            query = query.filter(command::Column::State.eq(state));
        }
        let mut rows = query
            .order_by_desc(command::Column::RequestedAt)
            .limit(limit)
            .all(&self.db)
            .await?;
        // Live commands in flight are not written yet (see `crate::devices::Origin::Live`). One that finished
        // between the read above and this look may be in both: keep the stored row.
        let live: Vec<command::Model> = self
            .live_commands_matching(device, state)
            .into_iter()
            .filter(|row| !rows.iter().any(|stored| stored.id == row.id))
            .collect();
        if !live.is_empty() {
            rows.extend(live);
            rows.sort_by_key(|row| std::cmp::Reverse(row.requested_at));
            rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        Ok(rows)
    }

    /// Cancels a command that is still waiting (not claimed by a delivering node).
    ///
    /// # Errors
    /// On a database failure.
    pub async fn cancel_command(&self, id: Uuid) -> Result<Cancel, StoreError> {
        let result = command::Entity::update_many()
            .col_expr(command::Column::State, Expr::value("cancelled"))
            .col_expr(command::Column::FinishedAt, Expr::value(Utc::now()))
            .col_expr(
                command::Column::Error,
                Expr::value("cancelled by an operator"),
            )
            .filter(command::Column::Id.eq(id))
            .filter(command::Column::State.eq(CommandState::Queued.as_str()))
            .filter(queued_delivery())
            .filter(command::Column::ClaimToken.is_null())
            .exec(&self.db)
            .await?;
        if result.rows_affected == 1 {
            return Ok(Cancel::Cancelled);
        }
        Ok(match self.command(id).await? {
            Some(row) => Cancel::NotQueued(row.state),
            None => Cancel::Unknown,
        })
    }

    /// Whether `device` has anything for [`Self::recover_claims`] or [`Self::next_queued`] to act on: a queued
    /// command, or one sent by an earlier connection. One indexed read; most registrations find nothing and
    /// then take no write lock at all (two empty UPDATEs per registration serialized reconnect storms on
    /// SQLite's single writer).
    ///
    /// # Errors
    /// On a database failure.
    pub async fn has_deliveries(&self, device: &str) -> Result<bool, StoreError> {
        Ok(self
            .devices_with_deliveries
            .get(device.to_owned())
            .await?
            .is_some())
    }

    /// Claims left behind by earlier connections of this device (it just registered, so they are dead):
    /// back to the queue, except a command that was already sent and is not safe to repeat, which fails.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn recover_claims(
        &self,
        device: &str,
        unsafe_commands: &[&str],
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        command::Entity::update_many()
            .col_expr(
                command::Column::State,
                Expr::value(CommandState::Failed.as_str()),
            )
            .col_expr(
                command::Column::Error,
                Expr::value("the device dropped after it was sent, and it is not safe to repeat"),
            )
            .col_expr(command::Column::FinishedAt, Expr::value(now))
            .filter(command::Column::Device.eq(device))
            .filter(queued_delivery())
            .filter(command::Column::State.eq(CommandState::Sent.as_str()))
            .filter(command::Column::Command.is_in(unsafe_commands.iter().copied()))
            .exec(&self.db)
            .await?;
        command::Entity::update_many()
            .col_expr(
                command::Column::State,
                Expr::value(CommandState::Queued.as_str()),
            )
            .col_expr(
                command::Column::ClaimToken,
                Expr::value(Option::<Uuid>::None),
            )
            .col_expr(
                command::Column::SentAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(command::Column::Device.eq(device))
            .filter(queued_delivery())
            .filter(
                command::Column::State
                    .is_in([CommandState::Queued.as_str(), CommandState::Sent.as_str()]),
            )
            .filter(command::Column::ClaimToken.is_not_null())
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// The oldest command waiting for `device`.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn next_queued(&self, device: &str) -> Result<Option<command::Model>, StoreError> {
        Ok(next_queued_query(device).one(&self.db).await?)
    }

    /// Takes a queued command for delivery; `false` when another node (or loop) got it first.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn claim_command(&self, id: Uuid, token: Uuid) -> Result<bool, StoreError> {
        let result = command::Entity::update_many()
            .col_expr(command::Column::ClaimToken, Expr::value(token))
            .col_expr(command::Column::ClaimedAt, Expr::value(Utc::now()))
            .filter(command::Column::Id.eq(id))
            .filter(command::Column::State.eq(CommandState::Queued.as_str()))
            .filter(command::Column::ClaimToken.is_null())
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Marks a command that expired before delivery.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn expire_command(&self, id: Uuid) -> Result<(), StoreError> {
        command::Entity::update_many()
            .col_expr(command::Column::State, Expr::value("expired"))
            .col_expr(command::Column::FinishedAt, Expr::value(Utc::now()))
            .col_expr(
                command::Column::Error,
                Expr::value("expired before the device came online"),
            )
            .filter(command::Column::Id.eq(id))
            .filter(command::Column::State.eq(CommandState::Queued.as_str()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// The device dropped before answering a queued-delivery command: back to the queue (at-least-once), or
    /// failed when it was sent and is not safe to repeat. Conditional on the claim, so a late report from
    /// an old connection never touches a newer delivery.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn requeue_after_drop(
        &self,
        id: Uuid,
        token: Option<Uuid>,
        unsafe_to_repeat: bool,
    ) -> Result<&'static str, StoreError> {
        let row = self.command(id).await?;
        let was_sent = row.as_ref().is_some_and(|r| r.sent_at.is_some());
        let mut update = command::Entity::update_many().filter(command::Column::Id.eq(id));
        update = match token {
            Some(token) => update.filter(command::Column::ClaimToken.eq(token)),
            None => update.filter(command::Column::ClaimToken.is_null()),
        };
        if was_sent && unsafe_to_repeat {
            update
                .col_expr(
                    command::Column::State,
                    Expr::value(CommandState::Failed.as_str()),
                )
                .col_expr(
                    command::Column::Error,
                    Expr::value(
                        "the device dropped after it was sent, and it is not safe to repeat",
                    ),
                )
                .col_expr(command::Column::FinishedAt, Expr::value(Utc::now()))
                .exec(&self.db)
                .await?;
            return Ok("failed");
        } else {
            update
                .col_expr(
                    command::Column::State,
                    Expr::value(CommandState::Queued.as_str()),
                )
                .col_expr(
                    command::Column::ClaimToken,
                    Expr::value(Option::<Uuid>::None),
                )
                .col_expr(
                    command::Column::SentAt,
                    Expr::value(Option::<DateTime<Utc>>::None),
                )
                .exec(&self.db)
                .await?;
        }
        Ok("queued")
    }
}

/// The devices among `devices` with commands to deliver (see [`super::batch_read`]).
pub(super) async fn devices_with_deliveries(
    db: DatabaseConnection,
    devices: Vec<String>,
) -> Result<std::collections::HashMap<String, ()>, DbErr> {
    Ok(devices_with_deliveries_query(devices)
        .into_tuple::<String>()
        .all(&db)
        .await?
        .into_iter()
        .map(|device| (device, ()))
        .collect())
}

/// Asked at every registration, for a batch of devices.
fn devices_with_deliveries_query(devices: Vec<String>) -> sea_orm::Select<command::Entity> {
    command::Entity::find()
        .select_only()
        .column(command::Column::Device)
        .distinct()
        .filter(command::Column::Device.is_in(devices))
        .filter(
            command::Column::State
                .is_in([CommandState::Queued.as_str(), CommandState::Sent.as_str()]),
        )
        .filter(queued_delivery())
}

fn next_queued_query(device: &str) -> sea_orm::Select<command::Entity> {
    command::Entity::find()
        .filter(command::Column::Device.eq(device))
        .filter(queued_delivery())
        .filter(command::Column::State.eq(CommandState::Queued.as_str()))
        .filter(command::Column::ClaimToken.is_null())
        .order_by_asc(command::Column::RequestedAt)
        .order_by_asc(command::Column::Id)
}

/// `deliver_queued = TRUE` with the literal in the SQL, not a bound parameter: the index the offline queue's
/// look-ups use is partial on exactly this term, and PostgreSQL cannot prove a bound parameter true in a
/// generic (cached) plan (SQLite re-prepares with the bound value; migration `m20261207_000001`).
fn queued_delivery() -> Expr {
    sea_orm::sea_query::ExprTrait::eq(
        Expr::col(command::Column::DeliverQueued),
        Expr::cust("TRUE"),
    )
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, QueryTrait};

    use super::*;

    async fn plan(store: &Store, query: sea_orm::Select<command::Entity>) -> String {
        crate::store::tests::sqlite_plan(store.connection(), query.build(DbBackend::Sqlite)).await
    }

    /// The offline queue's look-ups must be covered by the partial index: a query the index's `WHERE` does not
    /// provably hold for would fall back to `(device, requested_at)` and walk a device's every live command.
    #[tokio::test]
    async fn queue_look_ups_use_the_partial_index_of_queued_deliveries() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gh.db");
        let store = Store::connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        let index = "ix_commands_queued_device_state";
        let next = plan(&store, next_queued_query("SN1")).await;
        assert!(next.contains(index), "next_queued: {next}");
        let batch = plan(
            &store,
            devices_with_deliveries_query(vec!["SN1".into(), "SN2".into()]),
        )
        .await;
        assert!(batch.contains(index), "devices_with_deliveries: {batch}");
    }
}
