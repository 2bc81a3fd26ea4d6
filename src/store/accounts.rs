//! Accounts, the id tags they own, subscription products and subscriptions.
//!
//! A subscription's `expired` state is never written: it is derived when read ([`subscription_state`]), so
//! correctness does not depend on a background job.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use entity::{account, id_tag, product, subscription};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, SqlErr, TransactionTrait,
};

use super::{Store, StoreError};

/// The state of a subscription at `now`, as every reader reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionState {
    Active,
    Cancelled,
    Expired,
}

impl SubscriptionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::Active => "active",
            SubscriptionState::Cancelled => "cancelled",
            SubscriptionState::Expired => "expired",
        }
    }

    /// Parses a state name as clients write it (`?state=`).
    pub fn parse(text: &str) -> Option<SubscriptionState> {
        match text {
            "active" => Some(SubscriptionState::Active),
            "cancelled" => Some(SubscriptionState::Cancelled),
            "expired" => Some(SubscriptionState::Expired),
            _ => None,
        }
    }
}

/// Written states; `expired` is only ever derived.
const ACTIVE: &str = "active";
const CANCELLED: &str = "cancelled";

/// `expired` once `ends_at` has passed, whatever the row says, unless it was cancelled first.
pub fn subscription_state(row: &subscription::Model, now: DateTime<Utc>) -> SubscriptionState {
    match row.state.as_str() {
        CANCELLED => SubscriptionState::Cancelled,
        _ if row.ends_at <= now => SubscriptionState::Expired,
        ACTIVE => SubscriptionState::Active,
        // Unknown text (a hand-edited row) never grants anything.
        _ => SubscriptionState::Expired,
    }
}

#[derive(Clone, Debug)]
pub struct NewAccount {
    pub name: String,
    /// Already normalised (trimmed, lower-case) by the caller.
    pub email: String,
    pub is_active: bool,
}

#[derive(Clone, Debug, Default)]
pub struct AccountPatch {
    pub name: Option<String>,
    pub email: Option<String>,
    pub is_active: Option<bool>,
}

/// Outcome of a write that may hit the unique email.
#[derive(Debug)]
pub enum AccountWrite {
    Done(account::Model),
    NotFound,
    EmailTaken,
}

#[derive(Clone, Debug)]
pub struct NewProduct {
    pub name: String,
    pub description: Option<String>,
    pub price_cents: i64,
    pub period_days: i32,
    pub is_active: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub price_cents: Option<i64>,
    pub period_days: Option<i32>,
    pub is_active: Option<bool>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ProductDelete {
    Deleted,
    NotFound,
    /// Subscriptions refer to it; deactivate it instead.
    Sold,
}

#[derive(Debug)]
pub enum SubscribeOutcome {
    Created(subscription::Model),
    UnknownAccount,
    UnknownProduct,
    InactiveAccount,
    InactiveProduct,
    /// The account holds an active subscription of that product already (this one).
    AlreadyActive(subscription::Model),
}

#[derive(Debug)]
pub enum CancelOutcome {
    Cancelled(subscription::Model),
    NotFound,
    /// Cancelled or expired already.
    NotActive(subscription::Model, SubscriptionState),
}

fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

impl Store {
    // ---- accounts -------------------------------------------------------------------------------------

    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self))]
    pub async fn account(&self, id: i32) -> Result<Option<account::Model>, StoreError> {
        Ok(account::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// # Errors
    /// On a database failure.
    pub async fn list_accounts(&self) -> Result<Vec<account::Model>, StoreError> {
        Ok(account::Entity::find()
            .order_by_asc(account::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// Creates an account; `None` when the email belongs to another account already.
    ///
    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self, new), fields(email = %new.email))]
    pub async fn create_account(
        &self,
        new: NewAccount,
    ) -> Result<Option<account::Model>, StoreError> {
        let now = Utc::now();
        let row = account::ActiveModel {
            name: Set(new.name),
            email: Set(new.email),
            is_active: Set(new.is_active),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        };
        // The unique index decides, so two concurrent creations cannot both win.
        match row.insert(&self.db).await {
            Ok(row) => Ok(Some(row)),
            Err(err) if is_unique_violation(&err) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self, patch))]
    pub async fn patch_account(
        &self,
        id: i32,
        patch: AccountPatch,
    ) -> Result<AccountWrite, StoreError> {
        let Some(row) = self.account(id).await? else {
            return Ok(AccountWrite::NotFound);
        };
        let mut active: account::ActiveModel = row.into();
        if let Some(name) = patch.name {
            active.name = Set(name);
        }
        if let Some(email) = patch.email {
            active.email = Set(email);
        }
        if let Some(is_active) = patch.is_active {
            active.is_active = Set(is_active);
        }
        active.updated_at = Set(Utc::now());
        match active.update(&self.db).await {
            Ok(row) => Ok(AccountWrite::Done(row)),
            Err(err) if is_unique_violation(&err) => Ok(AccountWrite::EmailTaken),
            // Deleted between the read and the write.
            Err(DbErr::RecordNotUpdated) => Ok(AccountWrite::NotFound),
            Err(err) => Err(err.into()),
        }
    }

    /// Deletes an account with its subscriptions; its id tags stay, without an account. `false` when unknown.
    ///
    /// # Errors
    /// On a database failure; then nothing is deleted.
    #[tracing::instrument(skip(self))]
    pub async fn delete_account(&self, id: i32) -> Result<bool, StoreError> {
        let txn = self.db.begin().await?;
        id_tag::Entity::update_many()
            .col_expr(id_tag::Column::AccountId, Expr::value(Option::<i32>::None))
            .filter(id_tag::Column::AccountId.eq(id))
            .exec(&txn)
            .await?;
        subscription::Entity::delete_many()
            .filter(subscription::Column::AccountId.eq(id))
            .exec(&txn)
            .await?;
        let deleted = account::Entity::delete_by_id(id).exec(&txn).await?;
        txn.commit().await?;
        Ok(deleted.rows_affected > 0)
    }

    /// The id tags an account owns, by tag.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn id_tags_of_account(
        &self,
        account_id: i32,
    ) -> Result<Vec<id_tag::Model>, StoreError> {
        Ok(id_tag::Entity::find()
            .filter(id_tag::Column::AccountId.eq(account_id))
            .order_by_asc(id_tag::Column::Tag)
            .all(&self.db)
            .await?)
    }

    // ---- products -------------------------------------------------------------------------------------

    /// # Errors
    /// On a database failure.
    pub async fn product(&self, id: i32) -> Result<Option<product::Model>, StoreError> {
        Ok(product::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// Products by id; only the active ones unless `include_inactive`.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn list_products(
        &self,
        include_inactive: bool,
    ) -> Result<Vec<product::Model>, StoreError> {
        let mut query = product::Entity::find();
        if !include_inactive {
            query = query.filter(product::Column::IsActive.eq(true));
        }
        Ok(query
            .order_by_asc(product::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self, new), fields(name = %new.name))]
    pub async fn create_product(&self, new: NewProduct) -> Result<product::Model, StoreError> {
        let now = Utc::now();
        Ok(product::ActiveModel {
            name: Set(new.name),
            description: Set(new.description),
            price_cents: Set(new.price_cents),
            period_days: Set(new.period_days),
            is_active: Set(new.is_active),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(&self.db)
        .await?)
    }

    /// Changes a product; subscriptions sold before keep their price and end. `None` when unknown.
    ///
    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self, patch))]
    pub async fn patch_product(
        &self,
        id: i32,
        patch: ProductPatch,
    ) -> Result<Option<product::Model>, StoreError> {
        let Some(row) = self.product(id).await? else {
            return Ok(None);
        };
        let mut active: product::ActiveModel = row.into();
        if let Some(name) = patch.name {
            active.name = Set(name);
        }
        if let Some(description) = patch.description {
            active.description = Set(description);
        }
        if let Some(price) = patch.price_cents {
            active.price_cents = Set(price);
        }
        if let Some(days) = patch.period_days {
            active.period_days = Set(days);
        }
        if let Some(is_active) = patch.is_active {
            active.is_active = Set(is_active);
        }
        active.updated_at = Set(Utc::now());
        match active.update(&self.db).await {
            Ok(row) => Ok(Some(row)),
            Err(DbErr::RecordNotUpdated) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Deletes a product nobody bought.
    ///
    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self))]
    pub async fn delete_product(&self, id: i32) -> Result<ProductDelete, StoreError> {
        if self.product(id).await?.is_none() {
            return Ok(ProductDelete::NotFound);
        }
        let sold = subscription::Entity::find()
            .filter(subscription::Column::ProductId.eq(id))
            .count(&self.db)
            .await?;
        if sold > 0 {
            return Ok(ProductDelete::Sold);
        }
        match product::Entity::delete_by_id(id).exec(&self.db).await {
            Ok(result) if result.rows_affected > 0 => Ok(ProductDelete::Deleted),
            Ok(_) => Ok(ProductDelete::NotFound),
            // Sold between the count and the delete (the foreign key restricts it).
            Err(err)
                if matches!(
                    err.sql_err(),
                    Some(SqlErr::ForeignKeyConstraintViolation(_))
                ) =>
            {
                Ok(ProductDelete::Sold)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Names of the given products, for listing subscriptions.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn product_names(&self, ids: &[i32]) -> Result<HashMap<i32, String>, StoreError> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut names = HashMap::new();
        for chunk in ids.chunks(400) {
            for row in product::Entity::find()
                .filter(product::Column::Id.is_in(chunk.to_vec()))
                .all(&self.db)
                .await?
            {
                names.insert(row.id, row.name);
            }
        }
        Ok(names)
    }

    // ---- subscriptions --------------------------------------------------------------------------------

    /// Sells `product_id` to `account_id` for one period starting `now`.
    ///
    /// # Errors
    /// On a database failure; then nothing is written.
    #[tracing::instrument(skip(self, now))]
    pub async fn subscribe(
        &self,
        account_id: i32,
        product_id: i32,
        now: DateTime<Utc>,
    ) -> Result<SubscribeOutcome, StoreError> {
        let txn = self.db.begin().await?;
        // A no-op write on the account row first: it locks the row on PostgreSQL and takes the write lock on
        // SQLite, so two concurrent subscribes of one account run one after the other and the "already
        // active" check below cannot be raced.
        let locked = account::Entity::update_many()
            .col_expr(
                account::Column::IsActive,
                Expr::col(account::Column::IsActive),
            )
            .filter(account::Column::Id.eq(account_id))
            .exec(&txn)
            .await?;
        if locked.rows_affected == 0 {
            return Ok(SubscribeOutcome::UnknownAccount);
        }
        let Some(account) = account::Entity::find_by_id(account_id).one(&txn).await? else {
            return Ok(SubscribeOutcome::UnknownAccount);
        };
        let Some(product) = product::Entity::find_by_id(product_id).one(&txn).await? else {
            return Ok(SubscribeOutcome::UnknownProduct);
        };
        if !account.is_active {
            return Ok(SubscribeOutcome::InactiveAccount);
        }
        if !product.is_active {
            return Ok(SubscribeOutcome::InactiveProduct);
        }
        let current = subscription::Entity::find()
            .filter(subscription::Column::AccountId.eq(account_id))
            .filter(subscription::Column::ProductId.eq(product_id))
            .filter(subscription::Column::State.eq(ACTIVE))
            .all(&txn)
            .await?
            .into_iter()
            .find(|s| subscription_state(s, now) == SubscriptionState::Active);
        if let Some(current) = current {
            return Ok(SubscribeOutcome::AlreadyActive(current));
        }
        let row = subscription::ActiveModel {
            account_id: Set(account_id),
            product_id: Set(product_id),
            price_cents: Set(product.price_cents),
            starts_at: Set(now),
            ends_at: Set(now + Duration::days(i64::from(product.period_days))),
            state: Set(ACTIVE.to_owned()),
            cancelled_at: Set(None),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(SubscribeOutcome::Created(row))
    }

    /// # Errors
    /// On a database failure.
    pub async fn subscription(&self, id: i32) -> Result<Option<subscription::Model>, StoreError> {
        Ok(subscription::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// Newest first; one account's when `account_id` is given.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn list_subscriptions(
        &self,
        account_id: Option<i32>,
    ) -> Result<Vec<subscription::Model>, StoreError> {
        let mut query = subscription::Entity::find();
        if let Some(account_id) = account_id {
            query = query.filter(subscription::Column::AccountId.eq(account_id));
        }
        Ok(query
            .order_by_desc(subscription::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// The subscriptions of an account that are active at `now`, newest first.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn active_subscriptions_of(
        &self,
        account_id: i32,
        now: DateTime<Utc>,
    ) -> Result<Vec<subscription::Model>, StoreError> {
        // Expiry is compared here rather than in SQL: SQLite stores times as text.
        Ok(subscription::Entity::find()
            .filter(subscription::Column::AccountId.eq(account_id))
            .filter(subscription::Column::State.eq(ACTIVE))
            .order_by_desc(subscription::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .filter(|s| subscription_state(s, now) == SubscriptionState::Active)
            .collect())
    }

    /// Ends an active subscription at once.
    ///
    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self, now))]
    pub async fn cancel_subscription(
        &self,
        id: i32,
        now: DateTime<Utc>,
    ) -> Result<CancelOutcome, StoreError> {
        let Some(row) = self.subscription(id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        let state = subscription_state(&row, now);
        if state != SubscriptionState::Active {
            return Ok(CancelOutcome::NotActive(row, state));
        }
        // Conditional on the written state, so a concurrent cancel changes nothing twice.
        subscription::Entity::update_many()
            .col_expr(subscription::Column::State, Expr::value(CANCELLED))
            .col_expr(subscription::Column::CancelledAt, Expr::value(now))
            .filter(subscription::Column::Id.eq(id))
            .filter(subscription::Column::State.eq(ACTIVE))
            .exec(&self.db)
            .await?;
        match self.subscription(id).await? {
            Some(row) => Ok(CancelOutcome::Cancelled(row)),
            None => Ok(CancelOutcome::NotFound),
        }
    }

    /// Whether the account owning `tag` (exact match, as OCPP sends it) holds an active subscription.
    /// `false` for an unknown tag or a tag without an account.
    ///
    /// # Errors
    /// On a database failure.
    #[tracing::instrument(skip(self))]
    pub async fn tag_has_active_subscription(&self, tag: &str) -> Result<bool, StoreError> {
        let Some(account_id) = self.id_tag(tag).await?.and_then(|t| t.account_id) else {
            return Ok(false);
        };
        Ok(!self
            .active_subscriptions_of(account_id, Utc::now())
            .await?
            .is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: &str, ends_in_days: i64, now: DateTime<Utc>) -> subscription::Model {
        subscription::Model {
            id: 1,
            account_id: 1,
            product_id: 1,
            price_cents: 990,
            starts_at: now - Duration::days(30),
            ends_at: now + Duration::days(ends_in_days),
            state: state.into(),
            cancelled_at: None,
            created_at: now - Duration::days(30),
        }
    }

    #[test]
    fn the_state_is_derived_from_the_row_and_the_clock() {
        let now = Utc::now();
        for (state, ends_in_days, expected) in [
            ("active", 1, SubscriptionState::Active),
            ("active", -1, SubscriptionState::Expired),
            ("active", 0, SubscriptionState::Expired),
            ("cancelled", 1, SubscriptionState::Cancelled),
            ("cancelled", -1, SubscriptionState::Cancelled),
            ("expired", 1, SubscriptionState::Expired),
            ("garbage", 1, SubscriptionState::Expired),
        ] {
            assert_eq!(
                subscription_state(&row(state, ends_in_days, now), now),
                expected,
                "{state} ending in {ends_in_days} days"
            );
        }
    }

    #[test]
    fn state_names_round_trip() {
        for state in [
            SubscriptionState::Active,
            SubscriptionState::Cancelled,
            SubscriptionState::Expired,
        ] {
            assert_eq!(SubscriptionState::parse(state.as_str()), Some(state));
        }
        assert_eq!(SubscriptionState::parse("Active"), None);
    }
}
