/** carveMasquerade: a lab's networks moved onto free subnets of a host's pool (the path a lab worker sharing its host takes). */
import t from 'tap';
import { carveMasquerade } from '../../src/lab/masquerade-pool.js';
import { parseCidr } from '../../src/lab/ipv4.js';

const lab = {
  name: 'prod-lab',
  networks: [
    { name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: '10.201.77.0/24' },
    { name: 'dmz', subnet: '10.9.0.0/25', gateway: '10.9.0.1', masquerade: '10.201.78.0/25' },
  ],
};

t.test('each network gets the first free subnet of its own size, skipping routes the host has', async (t) => {
  const out = carveMasquerade(lab, parseCidr('100.90.0.0/22', 'pool'), [
    parseCidr('100.90.0.0/24', 'route'),
    parseCidr('100.90.1.5/32', 'r'),
  ]);
  t.same(
    out.networks.map((n) => n.masquerade),
    ['100.90.2.0/24', '100.90.1.128/25'],
    'the /24 skips the taken .0 and the .1 with a host route; the /25 takes the free half of .1',
  );
  t.equal(out.networks[0]?.subnet, '192.168.77.0/24', 'the production side is untouched');
  t.equal(lab.networks[0]?.masquerade, '10.201.77.0/24', 'the definition itself is not changed');
});

t.test('a pool with no room, or smaller than a network, is refused with a clear error', async (t) => {
  t.throws(() => carveMasquerade(lab, parseCidr('100.90.0.0/24', 'pool'), []), {
    code: 'LAB_MASQUERADE_POOL_FULL',
    message: /no free \/25/,
  });
  t.throws(() => carveMasquerade(lab, parseCidr('100.90.0.0/26', 'pool'), []), {
    code: 'LAB_MASQUERADE_POOL_FULL',
    message: /smaller than network prod/,
  });
});

t.test('static mappings get host addresses of the pool too, after the subnets', async (t) => {
  const withMapping = {
    name: 'dc-lab',
    networks: [
      {
        name: 'prod',
        subnet: '192.168.77.0/24',
        gateway: '192.168.77.1',
        masquerade: '10.201.77.0/24',
        staticMappings: [{ production: '192.168.77.20', host: '10.9.9.20' }],
      },
    ],
  };
  const out = carveMasquerade(withMapping, parseCidr('100.90.0.0/23', 'pool'), []);
  t.same(out.networks[0]?.masquerade, '100.90.0.0/24');
  t.same(out.networks[0]?.staticMappings, [{ production: '192.168.77.20', host: '100.90.1.0' }], 'the first free address after the subnet');
  t.throws(() => carveMasquerade(withMapping, parseCidr('100.90.0.0/24', 'pool'), []), {
    code: 'LAB_MASQUERADE_POOL_FULL',
    message: /static mapping of 192.168.77.20/,
  });
});
