//! The `Jobs` service: launch and inspect jobs.

use std::sync::Arc;

use conclave_proto::v1::{self, jobs_server::Jobs};
use tonic::{Request, Response, Status};

use crate::State;

/// Serves `conclave.v1.Jobs`.
pub struct JobsService {
    pub(crate) state: Arc<State>,
}

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn create_job(
        &self,
        request: Request<v1::CreateJobRequest>,
    ) -> Result<Response<v1::CreateJobResponse>, Status> {
        let req = request.into_inner();
        let state = Arc::clone(&self.state);
        // Builds and durably writes the initial model: off the async threads.
        let (job_id, req) = tokio::task::spawn_blocking(move || (state.create_job(&req), req))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let job_id = job_id?;
        let launcher = req.auth.map(|a| a.participant).unwrap_or_default();
        let name = req.spec.map(|s| s.name).unwrap_or_default();
        tracing::info!(job = %job_id, %name, %launcher, "job created");
        Ok(Response::new(v1::CreateJobResponse { job_id }))
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::JobInfo>, Status> {
        Ok(Response::new(self.state.read_job(&request.into_inner())?))
    }

    async fn record_export(
        &self,
        request: Request<v1::RecordExportRequest>,
    ) -> Result<Response<v1::RecordExportResponse>, Status> {
        let req = request.into_inner();
        let state = Arc::clone(&self.state);
        // A durable ledger append: off the async threads.
        let ledger_index = tokio::task::spawn_blocking(move || state.record_export(&req))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(v1::RecordExportResponse { ledger_index }))
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        Ok(Response::new(self.state.read_jobs(&request.into_inner())?))
    }

    async fn list_rounds(
        &self,
        request: Request<v1::ListRoundsRequest>,
    ) -> Result<Response<v1::ListRoundsResponse>, Status> {
        Ok(Response::new(
            self.state.read_rounds(&request.into_inner())?,
        ))
    }
}
