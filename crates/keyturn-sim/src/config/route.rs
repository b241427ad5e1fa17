//! The routes of the Gemini API, as scripts and stats name them.

use serde::{Deserialize, Serialize};

/// A route of the Gemini API, as scripts and stats name it (the API's own method names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Route {
    /// `POST models/{m}:generateContent`.
    GenerateContent,
    /// `POST models/{m}:streamGenerateContent`.
    StreamGenerateContent,
    /// `POST models/{m}:countTokens` (spends no quota).
    CountTokens,
    /// `POST models/{m}:embedContent`.
    EmbedContent,
    /// `POST models/{m}:batchEmbedContents`.
    BatchEmbedContents,
    /// `GET models/{m}`: a probe that spends no quota.
    GetModel,
    /// `GET models`: a probe that spends no quota.
    ListModels,
    /// `POST upload/v1beta/files` (resumable start, its upload requests, multipart, raw).
    CreateFile,
    /// `GET files/{id}` (and the download of a file the service wrote).
    GetFile,
    /// `GET files`.
    ListFiles,
    /// `DELETE files/{id}`.
    DeleteFile,
    /// `POST cachedContents`.
    CreateCachedContent,
    /// `GET cachedContents/{id}`.
    GetCachedContent,
    /// `GET cachedContents`.
    ListCachedContents,
    /// `PATCH cachedContents/{id}`.
    UpdateCachedContent,
    /// `DELETE cachedContents/{id}`.
    DeleteCachedContent,
    /// `POST models/{m}:batchGenerateContent`.
    BatchGenerateContent,
    /// `POST models/{m}:asyncBatchEmbedContent`.
    AsyncBatchEmbedContent,
    /// `GET batches/{id}`.
    GetBatch,
    /// `GET batches`.
    ListBatches,
    /// `POST batches/{id}:cancel`.
    CancelBatch,
    /// `DELETE batches/{id}`.
    DeleteBatch,
}

impl Route {
    /// Every route.
    pub const ALL: [Self; 22] = [
        Self::GenerateContent,
        Self::StreamGenerateContent,
        Self::CountTokens,
        Self::EmbedContent,
        Self::BatchEmbedContents,
        Self::GetModel,
        Self::ListModels,
        Self::CreateFile,
        Self::GetFile,
        Self::ListFiles,
        Self::DeleteFile,
        Self::CreateCachedContent,
        Self::GetCachedContent,
        Self::ListCachedContents,
        Self::UpdateCachedContent,
        Self::DeleteCachedContent,
        Self::BatchGenerateContent,
        Self::AsyncBatchEmbedContent,
        Self::GetBatch,
        Self::ListBatches,
        Self::CancelBatch,
        Self::DeleteBatch,
    ];

    /// The API's name for it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::GenerateContent => "generateContent",
            Self::StreamGenerateContent => "streamGenerateContent",
            Self::CountTokens => "countTokens",
            Self::EmbedContent => "embedContent",
            Self::BatchEmbedContents => "batchEmbedContents",
            Self::GetModel => "getModel",
            Self::ListModels => "listModels",
            Self::CreateFile => "createFile",
            Self::GetFile => "getFile",
            Self::ListFiles => "listFiles",
            Self::DeleteFile => "deleteFile",
            Self::CreateCachedContent => "createCachedContent",
            Self::GetCachedContent => "getCachedContent",
            Self::ListCachedContents => "listCachedContents",
            Self::UpdateCachedContent => "updateCachedContent",
            Self::DeleteCachedContent => "deleteCachedContent",
            Self::BatchGenerateContent => "batchGenerateContent",
            Self::AsyncBatchEmbedContent => "asyncBatchEmbedContent",
            Self::GetBatch => "getBatch",
            Self::ListBatches => "listBatches",
            Self::CancelBatch => "cancelBatch",
            Self::DeleteBatch => "deleteBatch",
        }
    }

    /// Whether it spends quota (the calls a quota or billing refusal is about).
    pub const fn spends_quota(self) -> bool {
        matches!(
            self,
            Self::GenerateContent
                | Self::StreamGenerateContent
                | Self::EmbedContent
                | Self::BatchEmbedContents
                | Self::BatchGenerateContent
                | Self::AsyncBatchEmbedContent
        )
    }

    /// Whether it is a cost-free `GET models…` probe.
    pub const fn is_probe(self) -> bool {
        matches!(self, Self::GetModel | Self::ListModels)
    }
}
