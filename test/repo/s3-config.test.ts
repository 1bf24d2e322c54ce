import t from 'tap';
import { RestorelabError } from '../../src/errors.js';
import { isS3Url, parseS3Url, s3SettingsFromEnv, s3Url } from '../../src/repo/s3-config.js';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof RestorelabError ? err.code : `not a RestorelabError: ${(err as Error).message}`;
  }
  return undefined;
}

t.test('s3:// URLs: bucket and prefix, the prefix always ending in /', async (t) => {
  t.same(parseS3Url('s3://backups/restorelab'), { bucket: 'backups', prefix: 'restorelab/' });
  t.same(parseS3Url('s3://backups/a/b/'), { bucket: 'backups', prefix: 'a/b/' });
  t.same(parseS3Url('s3://backups'), { bucket: 'backups', prefix: '' });
  t.same(parseS3Url('s3://backups/'), { bucket: 'backups', prefix: '' });
  t.equal(s3Url(parseS3Url('s3://my.bucket-1/x')), 's3://my.bucket-1/x/');
  t.ok(isS3Url('s3://b'));
  t.notOk(isS3Url('/var/repo'));
});

t.test('bad s3:// URLs are refused with BAD_S3_URL and a hint', async (t) => {
  for (const bad of [
    's3://',
    's3://UPPER/x',
    's3://ab/x',
    's3://a..b/x',
    's3://bucket/a//b',
    's3://bucket/../x',
    's3://bucket/a/./b',
    'http://bucket/x',
  ]) {
    t.equal(
      code(() => parseS3Url(bad)),
      'BAD_S3_URL',
      bad,
    );
  }
  try {
    parseS3Url('s3://Bad');
  } catch (err) {
    t.match((err as RestorelabError).hint ?? '', /s3:\/\/BUCKET\/PREFIX/);
  }
});

t.test('credentials and endpoint come from the AWS variables; missing keys are named', async (t) => {
  t.same(s3SettingsFromEnv({ AWS_ACCESS_KEY_ID: 'k', AWS_SECRET_ACCESS_KEY: 's', AWS_ENDPOINT_URL: 'http://127.0.0.1:7480' }), {
    endpoint: 'http://127.0.0.1:7480',
    region: 'us-east-1',
    accessKeyId: 'k',
    secretAccessKey: 's',
  });
  t.equal(s3SettingsFromEnv({ AWS_ACCESS_KEY_ID: 'k', AWS_SECRET_ACCESS_KEY: 's', AWS_REGION: 'eu-west-1' }).region, 'eu-west-1');
  t.equal(s3SettingsFromEnv({ AWS_ACCESS_KEY_ID: 'k', AWS_SECRET_ACCESS_KEY: 's' }).endpoint, undefined, 'AWS itself when unset');
  let err: RestorelabError | undefined;
  try {
    s3SettingsFromEnv({ AWS_ACCESS_KEY_ID: 'k' });
  } catch (e) {
    err = e as RestorelabError;
  }
  t.equal(err?.code, 'S3_CREDENTIALS_MISSING');
  t.match(err?.message ?? '', /AWS_SECRET_ACCESS_KEY is not set/);
  t.notMatch(err?.message ?? '', /AWS_ACCESS_KEY_ID/, 'only what is missing is named');
  t.match(err?.hint ?? '', /export AWS_ACCESS_KEY_ID/);
  t.equal(
    code(() => s3SettingsFromEnv({})),
    'S3_CREDENTIALS_MISSING',
  );
  t.equal(
    code(() => s3SettingsFromEnv({ AWS_ACCESS_KEY_ID: 'k', AWS_SECRET_ACCESS_KEY: 's', AWS_ENDPOINT_URL: 'ftp://x' })),
    'BAD_S3_URL',
  );
});
