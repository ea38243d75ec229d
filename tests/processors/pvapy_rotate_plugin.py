# ruff: noqa: B006, RUF059 -- written the way PvaPy plugins are (mutable default, tuple unpacking)
"""A plugin written only against PvaPy's interface (no pvaflow import): it must run unchanged.

It transposes each image, as the seed's example does, publishes it with updateOutputChannel
and keeps its own PvaPy-style statistics; ``configure`` records what it was given.
"""

import time

import numpy as np
import pvaccess as pva
from pvapy.hpc.adImageProcessor import AdImageProcessor
from pvapy.utility.floatWithUnits import FloatWithUnits


class HpcAdImageProcessor(AdImageProcessor):

    def __init__(self, configDict={}):
        AdImageProcessor.__init__(self, configDict)
        self.nProcessed = 0
        self.processingTime = 0
        self.lastConfig = {}
        self.started = False

    def start(self):
        self.started = True

    def configure(self, configDict):
        self.logger.debug(f'Configuration update: {configDict}')
        self.lastConfig = dict(configDict)

    def process(self, pvObject):
        t0 = time.time()
        (frameId, image, nx, ny, nz, colorMode, fieldKey) = self.reshapeNtNdArray(pvObject)
        if nx is None:
            return pvObject
        rotated = np.ascontiguousarray(np.swapaxes(image, 0, 1))
        out = self.replaceNtNdArrayImage2D(pvObject, frameId, rotated)
        self.updateOutputChannel(out)
        self.nProcessed += 1
        self.processingTime += time.time() - t0
        return out

    def resetStats(self):
        self.nProcessed = 0
        self.processingTime = 0

    def getStats(self):
        rate = self.nProcessed / self.processingTime if self.processingTime > 0 else 0
        return {
            'nProcessed': self.nProcessed,
            'processingTime': FloatWithUnits(self.processingTime, 's'),
            'processingRate': FloatWithUnits(rate, 'fps'),
            'lastConfigX': self.lastConfig.get('x', -1),
        }

    def getStatsPvaTypes(self):
        return {
            'nProcessed': pva.UINT,
            'processingTime': pva.DOUBLE,
            'processingRate': pva.DOUBLE,
            'lastConfigX': pva.INT,
        }
