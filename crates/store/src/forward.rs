//! The [`Store`](crate::Store) impl of every backend, written once: each backend defines the
//! trait's methods as inherent methods in its domain files (`resources.rs`, `index.rs`,
//! `keys.rs`, `identity.rs`, `audit.rs`, `policy.rs`, `write.rs`), and this macro writes the
//! trait impl that calls them, so the two backends do not repeat the trait's signatures there.

/// `forward_store!(Backend { overrides })`: `impl Store for Backend` calling `Backend`'s inherent
/// method of the same name for every required method; `overrides` are the provided methods the
/// backend replaces (written as in a trait impl).
macro_rules! forward_store {
    ($backend:ty { $($overrides:tt)* }) => {
        #[async_trait::async_trait]
        impl $crate::Store for $backend {
            async fn write(&self, ops: Vec<$crate::WriteOp>) -> Result<(), $crate::StoreError> {
                <$backend>::write(self, ops).await
            }
            async fn meta(&self, key: &str) -> Result<Option<String>, $crate::StoreError> {
                <$backend>::meta(self, key).await
            }
            async fn resource_current(&self, rtype: &str, id: &str)
                -> Result<Option<$crate::ResourceRow>, $crate::StoreError> {
                <$backend>::resource_current(self, rtype, id).await
            }
            async fn resource_version(&self, rtype: &str, id: &str, version: u32)
                -> Result<Option<$crate::ResourceRow>, $crate::StoreError> {
                <$backend>::resource_version(self, rtype, id, version).await
            }
            async fn history(&self, query: $crate::HistoryQuery)
                -> Result<Vec<$crate::HistoryEntry>, $crate::StoreError> {
                <$backend>::history(self, query).await
            }
            async fn versions_after(&self, after_seq: i64, limit: u32)
                -> Result<Vec<$crate::HistoryEntry>, $crate::StoreError> {
                <$backend>::versions_after(self, after_seq, limit).await
            }
            async fn data_key_by_compartment(&self, compartment: &str)
                -> Result<Option<$crate::DataKeyRow>, $crate::StoreError> {
                <$backend>::data_key_by_compartment(self, compartment).await
            }
            async fn data_key_by_id(&self, id: u64)
                -> Result<Option<$crate::DataKeyRow>, $crate::StoreError> {
                <$backend>::data_key_by_id(self, id).await
            }
            async fn reserve_data_key_id(&self) -> Result<u64, $crate::StoreError> {
                <$backend>::reserve_data_key_id(self).await
            }
            async fn data_keys_naming(&self, patient: &str) -> Result<Vec<u64>, $crate::StoreError> {
                <$backend>::data_keys_naming(self, patient).await
            }
            async fn data_key_counts(&self) -> Result<Vec<(u32, u64)>, $crate::StoreError> {
                <$backend>::data_key_counts(self).await
            }
            async fn data_keys_not_under(&self, kek_version: u32, limit: u32)
                -> Result<Vec<$crate::DataKeyRow>, $crate::StoreError> {
                <$backend>::data_keys_not_under(self, kek_version, limit).await
            }
            async fn shred_approval(&self, token_hash: &str)
                -> Result<Option<$crate::ShredApprovalRow>, $crate::StoreError> {
                <$backend>::shred_approval(self, token_hash).await
            }
            async fn data_keys_to_rotate(&self, limit: u32)
                -> Result<Vec<$crate::DataKeyRow>, $crate::StoreError> {
                <$backend>::data_keys_to_rotate(self, limit).await
            }
            async fn versions_under_retiring_keys(&self, limit: u32)
                -> Result<Vec<$crate::ResourceRow>, $crate::StoreError> {
                <$backend>::versions_under_retiring_keys(self, limit).await
            }
            async fn unused_retiring_keys(&self, limit: u32) -> Result<Vec<u64>, $crate::StoreError> {
                <$backend>::unused_retiring_keys(self, limit).await
            }
            async fn data_rotation_progress(&self)
                -> Result<$crate::DataRotationProgress, $crate::StoreError> {
                <$backend>::data_rotation_progress(self).await
            }
            async fn principal_by_username(&self, username: &str)
                -> Result<Option<$crate::PrincipalRow>, $crate::StoreError> {
                <$backend>::principal_by_username(self, username).await
            }
            async fn principal_by_id(&self, id: &str)
                -> Result<Option<$crate::PrincipalRow>, $crate::StoreError> {
                <$backend>::principal_by_id(self, id).await
            }
            async fn principals(&self) -> Result<Vec<$crate::PrincipalRow>, $crate::StoreError> {
                <$backend>::principals(self).await
            }
            async fn identity_counts(&self, created_after: i64, seen_after: i64)
                -> Result<$crate::stats::IdentityCounts, $crate::StoreError> {
                <$backend>::identity_counts(self, created_after, seen_after).await
            }
            async fn stats(&self) -> $crate::stats::StoreStats {
                <$backend>::stats(self).await
            }
            async fn credential(&self, principal_id: &str)
                -> Result<Option<$crate::CredentialRow>, $crate::StoreError> {
                <$backend>::credential(self, principal_id).await
            }
            async fn enrollment(&self, token_hash: &str)
                -> Result<Option<$crate::EnrollmentRow>, $crate::StoreError> {
                <$backend>::enrollment(self, token_hash).await
            }
            async fn session(&self, token_hash: &str)
                -> Result<Option<$crate::SessionRow>, $crate::StoreError> {
                <$backend>::session(self, token_hash).await
            }
            async fn audit_events(&self, after: Option<(String, u64)>, limit: u32)
                -> Result<Vec<carevault_audit::StoredEvent>, $crate::StoreError> {
                <$backend>::audit_events(self, after, limit).await
            }
            async fn audit_checkpoints(&self)
                -> Result<Vec<carevault_audit::Checkpoint>, $crate::StoreError> {
                <$backend>::audit_checkpoints(self).await
            }
            async fn audit_head(&self, node: &str) -> Result<
                (Option<(u64, [u8; 32])>, Option<carevault_audit::Checkpoint>),
                $crate::StoreError,
            > {
                <$backend>::audit_head(self, node).await
            }
            async fn compartment_organization(&self, compartment: &str)
                -> Result<Option<Option<String>>, $crate::StoreError> {
                <$backend>::compartment_organization(self, compartment).await
            }
            async fn api_key_by_hash(&self, key_hash: &str)
                -> Result<Option<$crate::ApiKeyRow>, $crate::StoreError> {
                <$backend>::api_key_by_hash(self, key_hash).await
            }
            async fn api_keys(&self) -> Result<Vec<$crate::ApiKeyRow>, $crate::StoreError> {
                <$backend>::api_keys(self).await
            }
            async fn policies(&self)
                -> Result<(i64, Vec<$crate::PolicyRow>), $crate::StoreError> {
                <$backend>::policies(self).await
            }
            async fn break_glass_grants(&self, principal_id: &str, now: i64)
                -> Result<Vec<$crate::BreakGlassRow>, $crate::StoreError> {
                <$backend>::break_glass_grants(self, principal_id, now).await
            }
            async fn search_index(&self, rtype: &str, clauses: Vec<$crate::IndexClause>)
                -> Result<Vec<String>, $crate::StoreError> {
                <$backend>::search_index(self, rtype, clauses).await
            }
            async fn resources_current(&self, rtype: &str, ids: Vec<String>)
                -> Result<Vec<$crate::ResourceRow>, $crate::StoreError> {
                <$backend>::resources_current(self, rtype, ids).await
            }
            async fn current_under_keys(&self, dek_ids: Vec<u64>)
                -> Result<Vec<(String, String)>, $crate::StoreError> {
                <$backend>::current_under_keys(self, dek_ids).await
            }
            async fn resource_ids(&self, rtype: &str) -> Result<Vec<String>, $crate::StoreError> {
                <$backend>::resource_ids(self, rtype).await
            }
            async fn audit_search(&self, query: $crate::AuditQuery)
                -> Result<Vec<carevault_audit::StoredEvent>, $crate::StoreError> {
                <$backend>::audit_search(self, query).await
            }
            async fn export_job(&self, id: &str)
                -> Result<Option<$crate::ExportJobRow>, $crate::StoreError> {
                <$backend>::export_job(self, id).await
            }
            async fn export_jobs(&self) -> Result<Vec<$crate::ExportJobRow>, $crate::StoreError> {
                <$backend>::export_jobs(self).await
            }
            $($overrides)*
        }
    };
}

pub(crate) use forward_store;
