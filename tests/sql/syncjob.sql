-- Test fixture: DDL for the Prisma model `SyncJob`, inferred from Prisma's
-- migration conventions (quoted PascalCase names, TIMESTAMP(3), "<Model>_pkey",
-- "<Model>_<field>_idx"). Production never runs this file; the real schema is
-- owned by the Prisma migrations.
CREATE TYPE "SyncJobStatus" AS ENUM ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED');
CREATE TABLE "SyncJob" (
  "id"          TEXT NOT NULL,
  "script"      TEXT NOT NULL,
  "status"      "SyncJobStatus" NOT NULL DEFAULT 'PENDING',
  "progress"    INTEGER NOT NULL DEFAULT 0,
  "total"       INTEGER,
  "processed"   INTEGER,
  "result"      JSONB,
  "error"       TEXT,
  "startedAt"   TIMESTAMP(3),
  "completedAt" TIMESTAMP(3),
  "createdAt"   TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
  CONSTRAINT "SyncJob_pkey" PRIMARY KEY ("id")
);
CREATE INDEX "SyncJob_status_idx"    ON "SyncJob" ("status");
CREATE INDEX "SyncJob_createdAt_idx" ON "SyncJob" ("createdAt");
