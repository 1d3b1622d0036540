//! Publishes every new notification as an EventBridge event, so that operators route them with
//! rules to e-mail, chat or a pager: source `stockpulse.keys`, detail-type the notification kind
//! (`key_revoked`, `rotation_due`, ...), detail the notification with its workspace.
//!
//! It wraps the notification store: an event goes out after the notification was stored and only
//! if it was new (a deduplicated one publishes nothing, so a reminder is published once). The
//! publication is best effort — a failed `PutEvents` is logged and the notification stays in the
//! store, where the API lists it.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use chrono::{DateTime, Utc};

use crate::domain::audit::AuditDraft;
use crate::domain::notifications::Notification;
use crate::ports::{NotificationStore, Page, StoreError};

pub const SOURCE: &str = "stockpulse.keys";

pub struct PublishingNotifications {
    inner: Arc<dyn NotificationStore>,
    client: Client,
    bus: String,
}

impl PublishingNotifications {
    /// `bus`: an event bus name or ARN (`default` for the account's default bus).
    pub fn new(inner: Arc<dyn NotificationStore>, client: Client, bus: impl Into<String>) -> PublishingNotifications {
        PublishingNotifications { inner, client, bus: bus.into() }
    }

    async fn publish(&self, notification: &Notification) {
        let detail = serde_json::json!({
            "id": notification.id,
            "workspace": notification.workspace,
            "kind": notification.kind.as_str(),
            "provider": notification.provider,
            "environment": notification.environment.as_str(),
            "key_id": notification.key_id,
            "message": notification.message,
            "created_at": notification.created_at,
        });
        let entry = PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(SOURCE)
            .detail_type(notification.kind.as_str())
            .detail(detail.to_string())
            .build();
        match self.client.put_events().entries(entry).send().await {
            Ok(out) if out.failed_entry_count() == 0 => {}
            Ok(out) => {
                let code = out.entries().first().and_then(|e| e.error_code()).unwrap_or("unknown").to_owned();
                tracing::warn!(notification = %notification.id, code, "EventBridge refused the notification event");
            }
            Err(e) => {
                let what = aws_sdk_eventbridge::error::DisplayErrorContext(&e).to_string();
                tracing::warn!(notification = %notification.id, error = %what.chars().take(300).collect::<String>(), "could not publish the notification event");
            }
        }
    }
}

#[async_trait]
impl NotificationStore for PublishingNotifications {
    async fn notify(&self, notification: &Notification, audit: Option<AuditDraft>) -> Result<Option<Notification>, StoreError> {
        let stored = self.inner.notify(notification, audit).await?;
        if let Some(new) = &stored {
            self.publish(new).await;
        }
        Ok(stored)
    }

    async fn notifications(
        &self,
        workspace: &str,
        unread_only: bool,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<Notification>, StoreError> {
        self.inner.notifications(workspace, unread_only, before, limit).await
    }

    async fn mark_read(&self, workspace: &str, id: &str, at: DateTime<Utc>) -> Result<Notification, StoreError> {
        self.inner.mark_read(workspace, id, at).await
    }
}
