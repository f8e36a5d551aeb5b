"""Study / series / instance index with a tenant column, QIDO columns and aggregates.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Columns follow PS3.18 Table 10.6.1-5 (required matching attributes) and Tables
10.6.3-3/-4/-5 (required return attributes).  DA/TM/DT values are kept as their
DICOM strings: fixed-width DA compares correctly as text, and QIDO range matching
normalises TM before comparing.  *_folded columns hold the case- and
accent-folded PN used for matching (see CONFORMANCE.md).
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    _run("""
    CREATE TABLE study (
        pk                      bigserial PRIMARY KEY,
        tenant                  text NOT NULL,
        study_uid               text NOT NULL,
        study_date              text,
        study_time              text,
        accession_number        text,
        referring_physician     text,
        referring_physician_folded text,
        patient_name            text,
        patient_name_folded     text,
        patient_id              text,
        patient_birth_date      text,
        patient_sex             text,
        study_id                text,
        study_description       text,
        timezone_offset         text,
        modalities              text[] NOT NULL DEFAULT '{}',
        num_series              integer NOT NULL DEFAULT 0,
        num_instances           integer NOT NULL DEFAULT 0,
        attrs                   jsonb NOT NULL DEFAULT '{}',
        created_at              timestamptz NOT NULL DEFAULT now(),
        updated_at              timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT study_uid_per_tenant UNIQUE (tenant, study_uid)
    );
    CREATE INDEX study_date_idx ON study (tenant, study_date);
    CREATE INDEX study_patient_id_idx ON study (tenant, patient_id);
    CREATE INDEX study_accession_idx ON study (tenant, accession_number);
    CREATE INDEX study_patient_name_idx ON study (tenant, patient_name_folded text_pattern_ops);
    CREATE INDEX study_referring_idx ON study (tenant, referring_physician_folded text_pattern_ops);
    CREATE INDEX study_study_id_idx ON study (tenant, study_id);
    CREATE INDEX study_modalities_idx ON study USING gin (modalities);

    CREATE TABLE series (
        pk                      bigserial PRIMARY KEY,
        tenant                  text NOT NULL,
        study_pk                bigint NOT NULL REFERENCES study (pk) ON DELETE CASCADE,
        series_uid              text NOT NULL,
        modality                text,
        series_number           integer,
        series_description      text,
        pps_start_date          text,
        pps_start_time          text,
        scheduled_step_ids      text[] NOT NULL DEFAULT '{}',
        requested_procedure_ids text[] NOT NULL DEFAULT '{}',
        timezone_offset         text,
        num_instances           integer NOT NULL DEFAULT 0,
        attrs                   jsonb NOT NULL DEFAULT '{}',
        created_at              timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT series_uid_per_tenant UNIQUE (tenant, series_uid)
    );
    CREATE INDEX series_study_idx ON series (study_pk, pk);
    CREATE INDEX series_modality_idx ON series (tenant, modality);
    CREATE INDEX series_pps_date_idx ON series (tenant, pps_start_date);
    CREATE INDEX series_sps_idx ON series USING gin (scheduled_step_ids);
    CREATE INDEX series_rp_idx ON series USING gin (requested_procedure_ids);

    CREATE TABLE instance (
        pk                      bigserial PRIMARY KEY,
        tenant                  text NOT NULL,
        study_pk                bigint NOT NULL REFERENCES study (pk) ON DELETE CASCADE,
        series_pk               bigint NOT NULL REFERENCES series (pk) ON DELETE CASCADE,
        sop_uid                 text NOT NULL,
        sop_class_uid           text NOT NULL,
        instance_number         integer,
        rows                    integer,
        columns                 integer,
        bits_allocated          integer,
        number_of_frames        integer,
        transfer_syntax_uid     text NOT NULL,
        object_key              text NOT NULL,
        size                    bigint NOT NULL,
        sha256                  bytea NOT NULL,
        metadata                jsonb NOT NULL,
        created_at              timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT sop_uid_per_tenant UNIQUE (tenant, sop_uid),
        CONSTRAINT object_key_unique UNIQUE (object_key)
    );
    CREATE INDEX instance_series_idx ON instance (series_pk, pk);
    CREATE INDEX instance_study_idx ON instance (study_pk, pk);
    CREATE INDEX instance_sop_class_idx ON instance (tenant, sop_class_uid);
    """)


def downgrade() -> None:
    _run("DROP TABLE instance; DROP TABLE series; DROP TABLE study;")


def _run(script: str) -> None:
    # asyncpg prepares each statement: one op.execute per statement.
    for statement in script.split(";"):
        if statement.strip():
            op.execute(statement)
