-- The do-not-contact register (nba_service.domain.do_not_contact): why a customer must not be contacted, on
-- which channel (NULL: every channel), from which source, by whom, until when. A listing is lifted by setting
-- removed_*, never deleted or rewritten: the triggers below refuse both, whoever writes, so a compliance export
-- shows the whole history. No foreign key to customers: the history outlives a deleted customer, as the
-- decision log does (the service checks the customer exists when a listing is added).
CREATE TABLE do_not_contact (
    listing_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id   text NOT NULL CHECK (length(customer_id) BETWEEN 1 AND 64),
    channel       text CHECK (channel IN ('agent_desktop', 'outbound_dialer')),
    reason        text NOT NULL
                  CHECK (reason IN ('customer_request', 'regulator_list', 'bereavement', 'vulnerability')),
    source        text NOT NULL CHECK (length(btrim(source)) > 0),
    note          text NOT NULL DEFAULT '',
    added_by      text NOT NULL CHECK (length(btrim(added_by)) > 0),
    added_at      timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz CHECK (expires_at IS NULL OR expires_at > added_at),
    removed_by    text,
    removed_at    timestamptz,
    removal_note  text,
    CHECK ((removed_at IS NULL) = (removed_by IS NULL))
);
-- The profile read's subquery: a customer's listings that are not removed.
CREATE INDEX do_not_contact_customer ON do_not_contact (customer_id) WHERE removed_at IS NULL;

CREATE FUNCTION do_not_contact_keep_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'do_not_contact keeps its history: lift a listing (removed_at), never delete it';
    END IF;
    IF OLD.removed_at IS NOT NULL
       OR (NEW.listing_id, NEW.customer_id, NEW.channel, NEW.reason, NEW.source, NEW.note, NEW.added_by,
           NEW.added_at, NEW.expires_at)
          IS DISTINCT FROM (OLD.listing_id, OLD.customer_id, OLD.channel, OLD.reason, OLD.source, OLD.note,
                            OLD.added_by, OLD.added_at, OLD.expires_at) THEN
        RAISE EXCEPTION 'do_not_contact keeps its history: a listing is only ever marked removed, once';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER do_not_contact_keep_history BEFORE UPDATE OR DELETE ON do_not_contact
    FOR EACH ROW EXECUTE FUNCTION do_not_contact_keep_history();
