//! Shenxing panels: the row a first login creates, the whitelist entry and per-panel secret an admin sets.

use chrono::{DateTime, Utc};
use entity::panel;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
};

use super::{Store, StoreError};

/// What an admin sets with `PUT /api/panels/{sn}` (the whole entry).
#[derive(Debug, Clone)]
pub struct PanelEntry {
    pub name: Option<String>,
    /// `None`: any password is accepted (the vendor manager's default).
    pub secret: Option<String>,
    pub is_active: bool,
}

impl Store {
    /// # Errors
    /// On a database failure.
    pub async fn panel_by_sn(&self, sn: &str) -> Result<Option<panel::Model>, StoreError> {
        Ok(panel::Entity::find()
            .filter(panel::Column::Sn.eq(sn))
            .one(&self.db)
            .await?)
    }

    /// # Errors
    /// On a database failure.
    pub async fn list_panels(&self) -> Result<Vec<panel::Model>, StoreError> {
        Ok(panel::Entity::find()
            .order_by_asc(panel::Column::Sn)
            .all(&self.db)
            .await?)
    }

    /// Records a successful login: creates the panel's row on its first login, stamps the login time.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn record_panel_login(&self, sn: &str) -> Result<panel::Model, StoreError> {
        let now = Utc::now();
        // Insert-or-ignore first, then update: both are writes, so SQLite never has to upgrade a read lock.
        let row = panel::ActiveModel {
            sn: Set(sn.to_owned()),
            name: Set(None),
            secret: Set(None),
            is_active: Set(true),
            is_whitelisted: Set(false),
            status: Set(None),
            last_login_at: Set(Some(now)),
            last_seen: Set(Some(now)),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        };
        panel::Entity::insert(row)
            .on_conflict_do_nothing_on([panel::Column::Sn])
            .exec_without_returning(&self.db)
            .await?;
        panel::Entity::update_many()
            .col_expr(panel::Column::LastLoginAt, Expr::value(now))
            .col_expr(panel::Column::LastSeen, Expr::value(now))
            .filter(panel::Column::Sn.eq(sn))
            .exec(&self.db)
            .await?;
        self.panel_by_sn(sn)
            .await?
            .ok_or_else(|| StoreError::Db(sea_orm::DbErr::RecordNotFound(format!("panel {sn}"))))
    }

    /// # Errors
    /// On a database failure.
    pub async fn touch_panel(&self, sn: &str, seen: DateTime<Utc>) -> Result<(), StoreError> {
        panel::Entity::update_many()
            .col_expr(panel::Column::LastSeen, Expr::value(seen))
            .filter(panel::Column::Sn.eq(sn))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Creates or replaces an admin entry (which whitelists the panel); returns the row and whether it was
    /// created.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn put_panel(
        &self,
        sn: &str,
        entry: PanelEntry,
    ) -> Result<(panel::Model, bool), StoreError> {
        let now = Utc::now();
        match self.panel_by_sn(sn).await? {
            Some(existing) => {
                let mut active: panel::ActiveModel = existing.into();
                active.name = Set(entry.name);
                active.secret = Set(entry.secret);
                active.is_active = Set(entry.is_active);
                active.is_whitelisted = Set(true);
                active.updated_at = Set(now);
                Ok((active.update(&self.db).await?, false))
            }
            None => {
                let row = panel::ActiveModel {
                    sn: Set(sn.to_owned()),
                    name: Set(entry.name),
                    secret: Set(entry.secret),
                    is_active: Set(entry.is_active),
                    is_whitelisted: Set(true),
                    status: Set(None),
                    last_login_at: Set(None),
                    last_seen: Set(None),
                    created_at: Set(now),
                    updated_at: Set(now),
                    ..Default::default()
                };
                Ok((row.insert(&self.db).await?, true))
            }
        }
    }
}
