//! What the compute and the image service ask of Glance: image records read,
//! changed and deleted, data downloaded and uploaded. Exists so they run on
//! [`Glance`] in production and on an in-memory Glance in unit tests.

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde_json::Value;

use super::glance::{Glance, GlanceError, GlanceImage};
use crate::rpc::RequestContext;

/// A chunked image body.
pub type ImageData = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// An image service with Glance's v2 API (see [`Glance`] for each call).
pub trait ImageStore: Send + Sync + 'static {
    /// `GET /v2/images/<id>`.
    fn get<'a>(
        &'a self,
        ctx: Option<&'a RequestContext>,
        id: &'a str,
    ) -> BoxFuture<'a, Result<GlanceImage, GlanceError>>;
    /// `GET /v2/images?<filters>`, newest first.
    fn list<'a>(
        &'a self,
        ctx: Option<&'a RequestContext>,
        filters: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<Vec<GlanceImage>, GlanceError>>;
    /// `GET /v2/images/<id>/file`.
    fn download<'a>(
        &'a self,
        ctx: Option<&'a RequestContext>,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ImageData, GlanceError>>;
    /// `PATCH /v2/images/<id>`.
    fn update<'a>(
        &'a self,
        ctx: Option<&'a RequestContext>,
        id: &'a str,
        current: &'a GlanceImage,
        values: &'a [(&'a str, Value)],
    ) -> BoxFuture<'a, Result<GlanceImage, GlanceError>>;
    /// `PUT /v2/images/<id>/file`.
    fn upload<'a>(
        &'a self,
        ctx: Option<&'a RequestContext>,
        id: &'a str,
        data: ImageData,
    ) -> BoxFuture<'a, Result<(), GlanceError>>;
    /// `DELETE /v2/images/<id>` (a missing image is fine).
    fn delete<'a>(&'a self, ctx: Option<&'a RequestContext>, id: &'a str) -> BoxFuture<'a, Result<(), GlanceError>>;
    /// `POST /v2/images`: a new record (no data yet) with `body`'s fields.
    fn create<'a>(
        &'a self,
        ctx: Option<&'a RequestContext>,
        body: Value,
    ) -> BoxFuture<'a, Result<GlanceImage, GlanceError>>;
}

impl ImageStore for Glance {
    fn get<'a>(
        &'a self,
        ctx: Option<&'a RequestContext>,
        id: &'a str,
    ) -> BoxFuture<'a, Result<GlanceImage, GlanceError>> {
        Box::pin(Glance::get(self, ctx, id))
    }

    fn list<'a>(
        &'a self,
        ctx: Option<&'a RequestContext>,
        filters: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<Vec<GlanceImage>, GlanceError>> {
        Box::pin(Glance::list(self, ctx, filters))
    }

    fn download<'a>(
        &'a self,
        ctx: Option<&'a RequestContext>,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ImageData, GlanceError>> {
        Box::pin(Glance::download(self, ctx, id))
    }

    fn update<'a>(
        &'a self,
        ctx: Option<&'a RequestContext>,
        id: &'a str,
        current: &'a GlanceImage,
        values: &'a [(&'a str, Value)],
    ) -> BoxFuture<'a, Result<GlanceImage, GlanceError>> {
        Box::pin(Glance::update(self, ctx, id, current, values))
    }

    fn upload<'a>(
        &'a self,
        ctx: Option<&'a RequestContext>,
        id: &'a str,
        data: ImageData,
    ) -> BoxFuture<'a, Result<(), GlanceError>> {
        Box::pin(Glance::upload(self, ctx, id, data))
    }

    fn delete<'a>(&'a self, ctx: Option<&'a RequestContext>, id: &'a str) -> BoxFuture<'a, Result<(), GlanceError>> {
        Box::pin(Glance::delete(self, ctx, id))
    }

    fn create<'a>(
        &'a self,
        ctx: Option<&'a RequestContext>,
        body: Value,
    ) -> BoxFuture<'a, Result<GlanceImage, GlanceError>> {
        Box::pin(Glance::create(self, ctx, body))
    }
}
