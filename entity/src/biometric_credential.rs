use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "biometric_credentials")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub user_id: i32,
    /// Slot selector of the TM20 protocol: 0–9 fingerprints, 10 password, 11 card, 20–27 face, 30–37 palm, 50 photo.
    pub backupnum: i32,
    #[sea_orm(column_type = "Text", nullable)]
    pub record: Option<String>,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
